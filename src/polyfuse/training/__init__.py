"""Training on PyTorch Lightning: the module, data loaders, atomic checkpoints and exact resume."""
