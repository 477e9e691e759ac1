"""The one error a bad model file raises: a ValueError, so every command already turns it into exit 2."""

from __future__ import annotations


class ModelError(ValueError):
    """A model file that cannot be used; the message is one line naming the file and the cause."""
