"""Objectives: a loss function plus its named outputs (every name ends in `_loss`)."""
