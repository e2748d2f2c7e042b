"""Measuring sample quality: the sprite feature network, FID/KID (torchmetrics, torch-fidelity), the FID callback
used during training, and plots of a run. Imports core, nets, data and training."""
