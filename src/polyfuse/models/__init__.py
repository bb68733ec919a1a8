"""Encoders per modality, fusions over them, heads, and the assembled multimodal model."""
