"""Measuring quality: metrics, MATLAB-exact resizing, dataset evaluation."""
