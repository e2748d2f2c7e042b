"""Sprite data: the embedded procedural generator, the course's .npy files and folders of PNGs."""
