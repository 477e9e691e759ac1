"""upscaler: 4x super-resolution for photos and video with trained generators."""

__version__ = "0.1.0"
