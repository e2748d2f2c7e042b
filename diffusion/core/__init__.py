"""The diffusion math: noise schedules, training objectives (preconditioning and loss), the denoiser that joins
them to a network, samplers as plain functions over a denoiser and noise levels, and the exact denoiser of a finite
data set that checks them. Needs torch only; imports no other layer."""
