"""Video and image input: decoding, datasets, clip samplers, augmentation."""
