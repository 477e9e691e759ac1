"""Decoding, encoding and metadata of pictures; where outputs go and how they are written safely."""
