"""The engine's own failure, importable without torch: the batch runner reports it before a model is open."""

from __future__ import annotations


class FrameError(Exception):
    """The model could not produce a trustworthy picture for this frame."""
