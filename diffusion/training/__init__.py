"""Training with Lightning: the LightningModule that wires net, schedule, objective and sampler; its construction
from config; callbacks (sample grids, EMA, pre-emption); checkpoints and loggers. Imports core, nets and data."""
