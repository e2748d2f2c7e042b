"""FID and KID during training, against the data module's validation split."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from diffusion.core.errors import ConfigError
from diffusion.core.labels import LABEL_MIXES, sample_labels
from diffusion.core.sampling import Sampler
from diffusion.evaluation.metrics import ImageQuality, build_feature_net, check_feature_choice, describe, shard
from diffusion.evaluation.searched_levels import SampleQuality, search_levels, training_reference
from diffusion.training.cadence import Cadence
from diffusion.training.module import DiffusionModule
from diffusion.training.precision import callback_bf16

# The state key of an extra FID sampler's own callback before issue 20 (``suffix: _2step`` -> the name ``2step``).
OLD_SUFFIX_KEY = re.compile(r"FIDCallback\{'suffix': '_([A-Za-z0-9_]+)'\}")


class FIDCallback(L.Callback):
    """At validations, every ``every_n_steps`` training steps or ``fraction`` of the run (and at the last
    step; ``diffusion.training.cadence``), draw ``num_samples`` images with each of ``samplers``, labels in the
    validation split's class mix (``labels="data"``, the mix of the reference images; ``"uniform"`` cycles over
    the classes), and log ``val/fid``, ``val/kid_mean``,
    ``val/kid_std`` and ``val/fid_seconds`` (the time the whole measurement took). Each measurement
    is also appended to ``<dirpath>/fid.json`` with the feature network's version, without which an
    FID figure cannot be compared with another.

    Runs during validation, after Lightning's weight-averaging callback has swapped in the EMA
    weights (``train.py`` sorts that callback last). The noise is seeded identically every time, so
    the figure moves only when the model does.

    Multi-process runs: each process draws ``num_samples // world_size`` images (noise seeded by
    ``seed + rank``, its contiguous share of the global label sequence) and takes its contiguous share of the
    reference images; every process computes, torchmetrics gathering the states, so every process
    logs the figure one process would get on the same images. The reference statistics are computed
    the first time and kept.

    Data the callback cannot measure (no validation split; no class labels to train the sprite
    network on and no ``feature_weights``) turn it off with a warning: training goes on without FID.

    Args:
        dirpath: folder of ``fid.json`` (the run directory).
        samplers: named samplers, each measured on the same noise and labels: ``default`` (conf/callbacks/fid.yaml:
            DPM-Solver++(2M) SDE, 10 Karras steps) logs ``val/fid``, ``val/kid_mean``... and writes ``fid.json``;
            another entry NAME logs ``val/fid_NAME``, ``val/kid_mean_NAME``, ``val/fid_seconds_NAME`` and writes
            ``fid_NAME.json`` (``experiment=ect`` adds ``2step``). One reference and one feature network serve all.
        num_samples: generated images per measurement (all processes together).
        every_n_steps: measure at the first validation after every n training steps; 0 turns the callback off.
        fraction: or measure every ``fraction`` of the run (0.5: half-way and at the end); 0 turns it off.
        seed: noise seed of the generated images.
        batch_size: images sampled per call of the model.
        guidance: classifier-free guidance weight of the samples.
        labels: "data" draws the labels in the validation split's class proportions (``class_mix``: the same
            labels every time), "uniform" equally often; fid.json records which.
        features, feature_weights, inception_weights, cache_dir, train_settings: the feature network
            (``fid_features.*``; see ``diffusion.evaluation.metrics.build_feature_net``).
        kid_subsets, kid_subset_size: KID's subsets (the size is capped by the image counts).
        precision: "trainer" samples under bf16 autocast when the run trains in bf16-mixed (1.8x faster on the
            2-core CPU, FID +0.5%), "32" always in float32, "bf16" always under autocast; fid.json records it.
        search_samples, search_evaluations: a sampler with ``spacing: optimized`` and no ``levels`` of its own has
            its levels searched for the weights being measured before each measurement (``evaluation.searched_levels``:
            ``search_evaluations`` FIDs of ``search_samples`` images against training images, on rank 0, the result
            broadcast); the levels and the search's seconds go into its ``fid_NAME.json`` entry.
    """

    def __init__(
        self,
        dirpath: str,
        samplers: dict[str, Sampler] | None = None,
        num_samples: int = 1000,
        every_n_steps: int | None = None,
        fraction: float | None = 0.5,
        seed: int = 0,
        batch_size: int = 500,
        guidance: float = 0.0,
        labels: str = "data",
        features: str = "sprite",
        feature_weights: str | None = None,
        inception_weights: str | None = None,
        cache_dir: str | None = None,
        train_settings: dict[str, Any] | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        precision: str = "trainer",
        search_samples: int = 256,
        search_evaluations: int = 30,
    ):
        check_feature_choice(features)
        for key, value, least in (("search_samples", search_samples, 2), ("search_evaluations", search_evaluations, 1)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise ConfigError(f"callbacks.fid.{key}={value} must be an integer >= {least}")
        self.search_samples, self.search_evaluations = search_samples, search_evaluations
        self.search_reference: ImageQuality | None = None
        callback_bf16(precision, "32", "callbacks.fid")  # a bad value fails here, not mid-run
        if not (isinstance(num_samples, int) and num_samples >= 2):
            raise ConfigError(f"callbacks.fid.num_samples={num_samples} must be an integer >= 2")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError(f"callbacks.fid.batch_size={batch_size} must be a positive integer")
        if labels not in LABEL_MIXES:
            raise ConfigError(f"callbacks.fid.labels={labels!r} must be one of {', '.join(LABEL_MIXES)}")
        self.dirpath, self.labels = Path(dirpath), labels
        samplers = dict(samplers or {"default": Sampler("dpmpp_2m", steps=20, spacing="karras")})
        if "default" not in samplers:
            raise ConfigError(f"callbacks.fid.samplers has no `default` entry (logged as val/fid), only {', '.join(map(str, samplers))}; add one")
        for name in samplers:
            if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
                raise ConfigError(f"callbacks.fid.samplers.{name}: a sampler's name goes into metric and file names; use letters, digits and _")
        # the default first: its figures are the run's (val/fid), the others measured after it
        self.samplers = {str(name): samplers[name] for name in sorted(samplers, key=lambda name: name != "default")}
        self.num_samples, self.seed = num_samples, seed
        self.cadence = Cadence(every_n_steps, fraction, "callbacks.fid")
        self.batch_size, self.guidance = batch_size, guidance
        self.features, self.feature_weights, self.inception_weights = features, feature_weights, inception_weights
        self.cache_dir, self.train_settings = cache_dir, dict(train_settings or {}) or None
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.precision = precision
        self.quality: ImageQuality | None = None
        self.version: str | None = None
        self.histories: dict[str, list[dict[str, Any]]] = {name: [] for name in self.samplers}

    @property
    def sampler(self) -> Sampler:
        return self.samplers["default"]

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.histories["default"]

    @staticmethod
    def suffix(name: str) -> str:
        """What an entry's metric and file names carry: nothing for the default (val/fid, fid.json)."""
        return "" if name == "default" else f"_{name}"

    def history_path(self, name: str = "default") -> Path:
        return self.dirpath / f"fid{self.suffix(name)}.json"

    # -- set-up: the feature network, identical on every process ----------------------------------
    def setup(self, trainer: L.Trainer, pl_module: DiffusionModule, stage: str) -> None:
        if self.quality is not None or self.cadence.off:
            return
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "real_images"):
            raise ConfigError("the fid callback needs the run's data module (a SpriteDataModule) for its reference images")
        if self.num_samples // trainer.world_size < 1:
            raise ConfigError(f"callbacks.fid.num_samples={self.num_samples} leaves no samples for each of {trainer.world_size} processes")
        if self.labels == "data" and getattr(datamodule, "num_classes", 0) and not hasattr(datamodule, "class_counts"):
            # Said before training starts, not at the first measurement.
            raise ConfigError("callbacks.fid.labels=data needs the data module's class_counts; use callbacks.fid.labels=uniform")
        reason = self.unavailable(datamodule, trainer.world_size)
        if reason is not None:  # the same decision on every process: the data are the same
            rank_zero_warn(f"FID is off for this run: {reason}")
            self.cadence = Cadence(0, None, "callbacks.fid")
            return
        net = self._feature_net(trainer, datamodule)
        self.quality = ImageQuality(net, self.kid_subsets, self.kid_subset_size, seed=self.seed)
        self.version = self.quality.version
        if trainer.is_global_zero:
            # the version beside the figures: hparams.yaml, TensorBoard's hparams, the W&B config
            hparams: dict[str, Any] = {"fid_features": self.version}
            for name, sampler in self.samplers.items():
                fid = f"fid{self.suffix(name)}"
                hparams.update({
                    f"{fid}_num_samples": self.num_samples, f"{fid}_sampler": repr(sampler), f"{fid}_labels": self.labels,
                    f"{fid}_precision": "bf16" if self.samples_in_bf16(trainer) else "32",
                })
            for logger in trainer.loggers:
                logger.log_hyperparams(hparams)

    def samples_in_bf16(self, trainer: L.Trainer) -> bool:
        return callback_bf16(self.precision, getattr(trainer, "precision", "32-true"), "callbacks.fid")

    def unavailable(self, datamodule, world_size: int) -> str | None:
        """Why FID cannot be measured on this data (training goes on without it), or None."""
        n_val = len(datamodule.real_images("val"))
        if n_val < 2 * world_size:
            return f"the validation split, its reference, holds {n_val} images; raise data.val_fraction to measure it"
        if self.features == "sprite" and not self.feature_weights and not getattr(datamodule, "num_classes", 0):
            return (
                "the data have no class labels to train the sprite feature network on; train one on a labelled set "
                "(python -m diffusion.tools.train_features data=procedural) and pass fid_features.feature_weights=PATH"
            )
        return None

    def _feature_net(self, trainer: L.Trainer, datamodule) -> torch.nn.Module:
        """The sprite network is built (trained if not cached) on rank 0 and broadcast, so every
        process holds the same weights and a failure ends every process, not only rank 0."""
        if self.features == "inception" or trainer.world_size == 1:
            return self._build(datamodule)
        payload: dict[str, Any] | None = None
        if trainer.is_global_zero:
            try:
                net = self._build(datamodule)
                payload = {
                    "state": {k: v.cpu() for k, v in net.state_dict().items()},
                    "version": net.version,
                    "info": net.info,
                    "num_classes": net.num_classes,
                    "num_features": net.num_features,
                }
            except ConfigError as err:
                payload = {"error": str(err)}
        payload = trainer.strategy.broadcast(payload, src=0)
        if "error" in payload:
            raise ConfigError(payload["error"])
        from diffusion.evaluation.features import SpriteFeatureNet

        net = SpriteFeatureNet(payload["num_classes"], payload["num_features"])
        net.load_state_dict(payload["state"])
        net.version, net.info = payload["version"], payload["info"]
        return net.eval().requires_grad_(False)

    def _build(self, datamodule) -> torch.nn.Module:
        net = build_feature_net(
            self.features,
            datamodule,
            feature_weights=self.feature_weights,
            inception_weights=self.inception_weights,
            cache_dir=self.cache_dir,
            train_settings=self.train_settings,
            verbose=True,
        )
        accuracy = net.info.get("accuracy")
        note = f", held-out accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
        rank_zero_info(f"FID features: {net.version}{note}")
        return net

    # -- measuring ---------------------------------------------------------------------------------
    def due(self, trainer: L.Trainer) -> bool:
        return self.cadence.due(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: DiffusionModule) -> None:
        self.cadence.start(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: DiffusionModule) -> None:
        if not self.due(trainer):
            return
        self.cadence.done(trainer)
        if self.quality is None:
            self.setup(trainer, pl_module, "validate")
        for name in self.samplers:
            result = self.measure(trainer, pl_module, name)
            suffix = self.suffix(name)
            for key in ("fid", "kid_mean", "kid_std", "seconds"):
                metric = f"val/fid_seconds{suffix}" if key == "seconds" else f"val/{key}{suffix}"
                pl_module.log(metric, float(result[key]), sync_dist=trainer.world_size > 1)
            if trainer.is_global_zero:
                self._record(trainer, result, name)

    @torch.no_grad()
    def measure(self, trainer: L.Trainer, pl_module: DiffusionModule, name: str = "default") -> dict[str, Any]:
        """Sample this process's share with sampler ``name``, update, compute over all processes; the reference
        the first time."""
        start = time.perf_counter()
        assert self.quality is not None
        self.quality.to(pl_module.device)
        rank, world = trainer.global_rank, trainer.world_size
        if not self.quality.has_real:  # the first time only: the reference statistics are kept
            real = trainer.datamodule.real_images("val")
            self.quality.update_real(real[shard(len(real), rank, world)], batch_size=self.batch_size)
        per_rank = self.num_samples // world
        generator = torch.Generator().manual_seed(self.seed + rank)
        first = rank * per_rank
        datamodule = trainer.datamodule
        wants_counts = self.labels == "data" and pl_module.num_classes and hasattr(datamodule, "class_counts")
        counts = datamodule.class_counts("val") if wants_counts else None
        all_labels = sample_labels(self.num_samples, pl_module.num_classes, counts, self.labels)
        bf16 = self.samples_in_bf16(trainer)
        sampler, searched = self.samplers[name], {}
        if sampler.spacing == "optimized" and sampler.levels is None:
            searched = self.search(trainer, pl_module, sampler, all_labels, bf16)
            sampler = sampler.replace(levels=searched["levels"])
        for offset in range(0, per_rank, self.batch_size):
            count = min(self.batch_size, per_rank - offset)
            labels = all_labels[first + offset : first + offset + count] if all_labels is not None else None
            x = pl_module.sample(count, labels=labels, sampler=sampler, guidance=self.guidance, generator=generator, bf16=bf16)
            self.quality.update_fake(x)
        result = self.quality.compute()
        self.quality.reset_fake()
        result["seconds"] = time.perf_counter() - start
        result["precision"] = "bf16" if bf16 else "32"
        return {**result, **searched}

    def search(self, trainer: L.Trainer, pl_module: DiffusionModule, sampler: Sampler, labels, bf16: bool) -> dict[str, Any]:
        """The levels of ``sampler`` searched for the weights being measured (rank 0 searches, every rank gets its
        result: the samples of every process walk the same levels)."""
        payload = None
        if trainer.is_global_zero:
            if self.search_reference is None:
                self.search_reference = training_reference(self.quality.feature, trainer.datamodule.real_images("train"), self.seed,
                                                           pl_module.device)
            n = self.search_samples
            search_labels = None if labels is None else labels.repeat(n // len(labels) + 1)[:n]
            seed = self.seed + trainer.world_size  # the measurement's ranks use seed + rank: not the noise it is judged on
            objective = SampleQuality(pl_module, sampler, self.search_reference, n=n, seed=seed, labels=search_labels,
                                      bf16=bf16, batch_size=self.batch_size)
            result, seconds = search_levels(objective, pl_module.schedule, evaluations=self.search_evaluations)
            payload = {"levels": result.levels, "search_seconds": round(seconds, 2), "search_fid_karras": result.start_value,
                       "search_fid": result.value}
        return trainer.strategy.broadcast(payload, src=0) if trainer.world_size > 1 else payload

    def _record(self, trainer: L.Trainer, result: dict[str, Any], name: str = "default") -> None:
        entry = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            **{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in result.items()},
            "sampler": repr(self.samplers[name]),
            "features": self.version,
            "labels": self.labels,
        }
        entry["seconds"] = round(entry["seconds"], 2)
        self.histories[name].append(entry)
        which = "" if name == "default" else f" ({name})"
        rank_zero_info(f"step {trainer.global_step}{which}: {describe(result, self.version)}, {entry['seconds']} s")
        self.dirpath.mkdir(parents=True, exist_ok=True)
        payload = {"features": self.version, "num_samples": self.num_samples, "labels": self.labels, "history": self.histories[name]}
        path = self.history_path(name)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(path)

    def state_dict(self) -> dict[str, Any]:  # in checkpoints: a resumed run continues its fid.json histories and cadence
        others = {name: history for name, history in self.histories.items() if name != "default"}
        return {"history": self.history, "features": self.version, "histories": others, "cadence": self.cadence.state_dict()}

    def claim_old_states(self, states: dict[Any, Any]) -> None:
        """Called by ``training.resume.match_callback_states`` before the states are handed out: before issue 20 an
        extra FID sampler was a second FIDCallback keyed by its ``suffix`` (experiment=ect's
        ``FIDCallback{'suffix': '_2step'}``); its history becomes this callback's ``histories[NAME]``, so a run
        resumed from such a checkpoint keeps it instead of leaving it unclaimed."""
        for key in [key for key in states if isinstance(key, str)]:
            old = OLD_SUFFIX_KEY.fullmatch(key)
            if old and old.group(1) in self.histories:
                own = states.setdefault(self.state_key, {})
                own.setdefault("histories", {})[old.group(1)] = list(states.pop(key).get("history", []))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.histories["default"] = list(state_dict.get("history", []))
        for name, history in (state_dict.get("histories") or {}).items():
            if name in self.histories:
                self.histories[name] = list(history)
        if "cadence" in state_dict:
            self.cadence.load_state_dict(state_dict["cadence"])
