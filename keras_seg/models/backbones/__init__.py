"""Backbones: functions that map an image tensor to ``{stride: feature tensor}``."""
