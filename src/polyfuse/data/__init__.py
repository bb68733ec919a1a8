"""The data layer: a user's table in, validated, cached, batched tensors out."""
