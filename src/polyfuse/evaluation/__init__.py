"""Evaluation: metrics per target, over a split or a whole table."""
