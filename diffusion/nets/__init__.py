"""Networks F(x, c_noise, label): raw function approximators with no knowledge of schedules or objectives (their
preconditioning lives in ``core.denoiser``). A new architecture goes here. Imports ``core`` only (for errors)."""
