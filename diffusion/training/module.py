"""The LightningModule: wires a U-Net, a schedule, an objective and a sampler; the math lives elsewhere."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from diffusion.core.denoiser import Denoiser, evaluating, per_sample
from diffusion.core.denoising_loss import DenoisingLoss
from diffusion.core.errors import ConfigError, TrainingDiverged
from diffusion.core.level_prediction import LEVELS, PredictedLevel
from diffusion.core.objectives import Objective
from diffusion.core.sampling import Sampler, generate
from diffusion.core.schedules import Schedule

LR_SCHEDULES = ("constant", "linear", "cosine")


NETWORK_CONTRACT = "a network is called as net(x, c_noise, labels) and returns a tensor of x's shape (docs/architecture.md)"


def check_network(denoiser: Denoiser, num_classes: int, image_size: int) -> None:
    """Refuse, in one line and before any training step, a network that breaks ``NETWORK_CONTRACT``: a dry forward
    pass on two images, labelled with the first class and the null class (``num_classes``; None when unconditional).
    It runs in eval mode, without gradients and with the CPU generator's state restored afterwards, so a run draws
    the same random numbers with the check as without it.

    The dry run is on the CPU, where the module is built before Lightning moves it: a network that runs only on a
    GPU is refused on purpose, as checkpoints are rebuilt on the CPU (``checkpoints.module_from_checkpoint``) and
    ``sample.py device=cpu`` and the tests run there too; the error says so."""
    net = denoiser.net
    x = torch.zeros(2, 3, image_size, image_size)
    labels = torch.tensor([0, num_classes]) if num_classes else None
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), evaluating(net):
            output = denoiser.net_output(x, per_sample(torch.ones(()), x), labels)
    except (TypeError, RuntimeError, IndexError, ValueError) as err:
        detail = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"network {type(net).__name__} failed a dry run on the CPU on {image_size}x{image_size} images with {num_classes} classes ({detail}); {NETWORK_CONTRACT}") from None
    if not isinstance(output, Tensor):
        raise ConfigError(f"network {type(net).__name__} returned a {type(output).__name__}, not a tensor; {NETWORK_CONTRACT}")
    if tuple(output.shape) != tuple(x.shape):
        raise ConfigError(f"network {type(net).__name__} returned shape {tuple(output.shape)} for input {tuple(x.shape)}; {NETWORK_CONTRACT}")


class DiffusionModule(L.LightningModule):
    """Training (Ho et al. 2020, Algorithm 1, in the preconditioned form of ``objectives``) and sampling.

    Args:
        net: the raw network F(x, c_noise, label).
        schedule, objective: see ``schedules`` and ``objectives``.
        optimizer: a partial taking the parameters (``_partial_: true`` in the config).
        sampler: the default sampler for ``sample``.
        num_classes, image_size: what the network was built for (the data decides them: ``builders.build_module``);
            the network's contract is checked against them at construction (``check_network``).
        lr_warmup_steps: linear learning-rate warm-up from 0.
        lr_schedule: after warm-up, "constant", "linear" decay to 0 (the course) or "cosine".
        label_dropout: probability of replacing a label with the null class, which trains the
            unconditional model that classifier-free guidance needs.
        max_nonfinite_steps: consecutive steps with a NaN/inf loss that are skipped (no update) before
            training stops with an error; the weights, and so every checkpoint, stay finite.
        method: the training method (``training.method``), a callable ``method(denoiser, x0, labels, step,
            generator)`` returning per-sample losses, with a ``check(denoiser)`` that refuses parts it cannot train:
            ``core.denoising_loss.DenoisingLoss`` (None, as checkpoints before issue 20 store it, means this one) or
            ``core.consistency_tuning.ConsistencyTuning``.
        noise_conditioning: false: the network is not told the noise level (``core.denoiser.Denoiser``).
        class_names: names of the context classes, kept in the checkpoint for ``sample.py label=NAME``.
        config: the resolved run config, stored in checkpoints so they can be rebuilt without it.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        objective: Objective,
        optimizer: Callable[..., torch.optim.Optimizer],
        sampler: Sampler,
        num_classes: int,
        image_size: int,
        lr_warmup_steps: int = 0,
        lr_schedule: str = "constant",
        label_dropout: float = 0.1,
        max_nonfinite_steps: int = 10,  # for code building a module itself; runs take training.max_nonfinite_steps
        method: Callable[..., Tensor] | None = None,
        noise_conditioning: bool = True,
        class_names: list[str] | None = None,
        config: dict[str, Any] | None = None,
    ):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr_schedule {lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if not 0 <= label_dropout <= 1:
            raise ConfigError(f"label_dropout={label_dropout} must be in [0, 1]")
        self.denoiser = Denoiser(net, objective, schedule, noise_conditioning)
        self.num_classes, self.image_size = int(num_classes), int(image_size)
        check_network(self.denoiser, self.num_classes, self.image_size)
        self.method = method if method is not None else DenoisingLoss()
        self.method.check(self.denoiser)
        self.optimizer_factory = optimizer
        self.sampler = sampler
        self.lr_warmup_steps, self.lr_schedule, self.label_dropout = lr_warmup_steps, lr_schedule, label_dropout
        self.max_nonfinite_steps, self.nonfinite_steps = max_nonfinite_steps, 0
        self.validated_at_step = -1
        self.class_names = list(class_names or [])
        self.class_counts: list[int] | None = None  # training images per class, set by builders.build_module
        self.data_mean: Tensor | None = None  # the training images' per-pixel mean in [-1, 1], set there too
        self.config = config or {}

    @property
    def schedule(self) -> Schedule:
        return self.denoiser.schedule

    @property
    def level_predictor(self) -> nn.Module | None:
        """The noise-level predictor trained beside the denoiser (``core.level_prediction.LevelPredictorLoss``)."""
        return getattr(self.method, "predictor", None)

    def default_level(self) -> str:
        """How ``sample`` picks the level its denoiser sees: the predicted one for a model not told the level and
        trained with a predictor (its grids and FID during training too), else the sampler's."""
        return "predicted" if not self.denoiser.noise_conditioning and self.level_predictor is not None else "scheduled"

    def sampling_denoiser(self, level: str | None = None, spread: float = 1.0) -> Denoiser | PredictedLevel:
        """The denoiser the samplers call: ``level="scheduled"`` D itself, ``"predicted"`` D at each image's predicted
        level (``core.level_prediction.PredictedLevel``, ``spread`` its clamp), None the model's ``default_level``."""
        level = self.default_level() if level is None else level
        if level not in LEVELS:
            raise ConfigError(f"unknown level={level!r}; choose one of {', '.join(LEVELS)}")
        if level == "scheduled":
            return self.denoiser
        if self.level_predictor is None:
            raise ConfigError("level=predicted needs a model trained with a noise-level predictor (python train.py experiment=level_free); use level=scheduled")
        return PredictedLevel(self.denoiser, self.level_predictor, spread)

    def _labels(self, labels: Tensor, drop: bool) -> Tensor | None:
        """The labels the network sees: an unlabelled image (-1) is the null class (index ``num_classes``), the
        class classifier-free guidance (Ho & Salimans 2022) samples without a label; ``drop`` also replaces a
        ``label_dropout`` share of the labels by it."""
        if self.num_classes == 0:
            return None
        null_class = torch.full_like(labels, self.num_classes)
        labels = torch.where(labels < 0, null_class, labels)
        if drop and self.label_dropout > 0:
            null = torch.rand(labels.shape, device=labels.device) < self.label_dropout
            labels = torch.where(null, null_class, labels)
        return labels

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, labels = batch
        x0 = x0 * self.schedule.input_scale
        loss = self.loss(x0, self._labels(labels, drop=True)).mean()
        # Every rank must take the same decision, or DDP waits forever for the skipping rank's gradients.
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            self.nonfinite_steps += 1
            if self.nonfinite_steps > self.max_nonfinite_steps:
                raise TrainingDiverged(
                    f"the loss was NaN or infinite for {self.nonfinite_steps} steps in a row at step {self.global_step}; "
                    "lower optimizer.lr, keep gradient clipping on, or train with trainer.precision=32-true"
                )
            return None  # Lightning skips backward and the optimizer step
        self.nonfinite_steps = 0
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def loss(self, x0: Tensor, labels: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """Per-sample training loss of the configured training method."""
        return self.method(self.denoiser, x0, labels, step=self.global_step, generator=generator)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x0, labels = batch
        x0 = x0 * self.schedule.input_scale
        # Fixed noise levels and noise per batch: the validation loss moves only when the model does.
        loss = self.loss(x0, self._labels(labels, drop=False), torch.Generator().manual_seed(batch_idx)).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_at_step = self.global_step

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup, schedule = self.lr_warmup_steps, self.lr_schedule

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            if schedule == "linear":
                return 1 - progress
            if schedule == "cosine":
                return 0.5 * (1 + math.cos(math.pi * progress))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping (``trainer.gradient_clip_val``), applied apart to the denoiser's gradients and to those
        of a training method's own networks (``LevelPredictorLoss``'s predictor): under one global norm, the
        predictor's early gradients (errors of several nats) would shrink the denoiser's steps, and a level-free run
        would train its denoiser less than a conditioned run of the same budget."""
        method_params = [p for p in self.method.parameters() if p.grad is not None] if isinstance(self.method, nn.Module) else []
        if not gradient_clip_val or gradient_clip_val <= 0 or not method_params:  # Lightning: <= 0 clips nothing
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        for params in ([p for p in self.denoiser.parameters() if p.grad is not None], method_params):
            if gradient_clip_algorithm == "value":
                nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def checkpoint_info(self) -> dict[str, Any]:
        """What ``checkpoints.module_from_checkpoint`` needs besides the weights, and the training data's class counts
        (``sample.py label=data``) and mean image (the analytic first step); checkpoints from before them load without."""
        info = {"config": self.config, "class_names": self.class_names, "image_size": self.image_size}
        if self.class_counts is not None:
            info["class_counts"] = list(self.class_counts)
        if self.data_mean is not None:
            info["data_mean"] = self.data_mean.tolist()
        return info

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["diffusion"] = self.checkpoint_info()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before Lightning hands the callbacks their states: the place to match states stored under old keys.
        from diffusion.training.resume import match_callback_states

        match_callback_states(checkpoint, self.trainer.callbacks)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: Tensor | None = None,
        sampler: Sampler | None = None,
        guidance: float = 0.0,
        generator: torch.Generator | None = None,
        callback=None,
        bf16: bool = False,
        level: str | None = None,
        level_spread: float = 1.0,
    ) -> Tensor:
        """n images in [-1, 1]; labels index the context classes (None: unconditional / null class);
        ``bf16``: the network under bf16 autocast; ``level``, ``level_spread``: see ``sampling_denoiser``."""
        if labels is not None and self.num_classes == 0:
            raise ConfigError("this model was trained without class labels; drop label=")
        with evaluating(self):
            return generate(
                self.sampling_denoiser(level, level_spread),
                sampler or self.sampler,
                n,
                image_size=self.image_size,
                labels=labels,
                guidance=guidance,
                null_label=self.num_classes if self.num_classes else None,
                generator=generator,
                device=self.device,
                callback=callback,
                bf16=bf16,
                data_mean=self.data_mean,
            )
