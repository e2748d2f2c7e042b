"""Sprite data: the embedded procedural generator, the course's .npy files and folders of PNGs, served by one
LightningDataModule; image files (PNG, GIF, .npz) are written here too. Imports ``core`` only."""
