"""Commands: the bodies of train.py and sample.py, `python -m diffusion.tools.<name>` programs (evaluate,
sampler_fid, collapse, features, bench, sampler_benchmark), one-line error reporting and Hydra callbacks. May
import every layer; nothing imports it."""
