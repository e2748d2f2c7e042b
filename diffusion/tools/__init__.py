"""Commands: the bodies of train.py and sample.py, `python -m diffusion.tools.<name>` programs (evaluate,
sampler_fid, collapse, train_features, throughput, sampler_accuracy), one-line error reporting and Hydra callbacks. May
import every layer; nothing imports it."""
