"""Methods: model assembly, loss and training step of each published method, with presets."""
