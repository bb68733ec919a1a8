"""Per-modality decoding, feature extraction and train-time augmentation, as pure functions."""
