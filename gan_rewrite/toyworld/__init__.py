"""The toy world: procedural scenes with exact labels, a segmenter for them, and training of the toy StyleGAN2."""
