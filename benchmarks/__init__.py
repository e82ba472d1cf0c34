"""Benchmarks of keras_seg, and the PyTorch reference models they compare against."""
