"""Outputs: predictions and top-N lists, evaluation metrics, and atomic publishing."""
