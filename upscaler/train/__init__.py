"""`upscale train`: data, trainer and recipes."""
