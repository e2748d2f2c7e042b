"""Diffusion models on small images: schedules, objectives, samplers, a U-Net, Lightning wiring."""
