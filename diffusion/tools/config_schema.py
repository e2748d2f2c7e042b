"""The declared type and range of every user-facing key of ``train.py``, ``sample.py``, ``evaluate`` and ``train_features``.

One table per config group (the kinds are in ``diffusion.tools.config_types``; why a table rather than Hydra
structured configs is said there). A new key of a framework class is one entry here; without it the run stops
with ``<key> is not a setting of <group>`` and ``tests/test_config_schema.py`` fails on the default configs.
A user's own class (``network._target_=mypkg.Net``, ``sampler.fn=mypkg.sample_x``, a callback of their own) leaves
its group open: its extra keys pass, the keys declared here are still checked.

The choices come from the code that defines them (``LR_SCHEDULES``, ``SPACINGS``, ``CLIP_MODES``...), so the
schema and the constructors cannot disagree about a name.
"""

from __future__ import annotations

from functools import cache

from diffusion.core.denoiser import CLIP_MODES
from diffusion.core.labels import LABEL_MIXES
from diffusion.core.level_prediction import LEVELS
from diffusion.core.sampling import SPACINGS
from diffusion.evaluation.metrics import FEATURE_CHOICES
from diffusion.tools.config_types import (
    Anything,
    Bool,
    ByTarget,
    Choice,
    Either,
    Float,
    Int,
    ListOf,
    Node,
    Pattern,
    Str,
)
from diffusion.training.module import LR_SCHEDULES
from diffusion.training.power_ema import SIGMA_REL_MAX
from diffusion.training.precision import CALLBACK_PRECISIONS, SAMPLING_PRECISIONS
from diffusion.training.progress_log import STYLES as PROGRESS_STYLES

SEED = Int(min=0, max=2**32 - 1)
PATH = Str()
OPTIONAL_PATH = Str(null=True)
POSITIVE = Float(low=0, low_open=True)
NON_NEGATIVE = Float(low=0)
SHARE = Float(low=0, high=1)  # of trainer.max_steps; 0 turns the event off
# A cadence's share of the run; null leaves the decision to every_n_steps (or, for validation, to Lightning)
CADENCE_SHARE = Float(low=0, high=1, null=True)
EVERY = Int(min=0, null=True)  # a fixed interval in steps (0: never); null: the share decides
DEVICE = Pattern(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps", "auto")
FEATURES = Choice(FEATURE_CHOICES)

# -- the data ---------------------------------------------------------------------------------------------------
DATA = Node(
    {
        "_target_": Str(), "batch_size": Int(min=1), "val_fraction": Float(low=0, high=1, high_open=True),
        "split_seed": SEED, "hflip": Bool(), "seed": SEED,
        # procedural
        "n": Int(min=10), "generator_seed": SEED, "cache_dir": OPTIONAL_PATH,
        # sprites
        "dir": PATH, "images": PATH, "labels": OPTIONAL_PATH, "class_names": ListOf(Str(), null=True),
        # folder
        "image_size": Int(min=1), "cell_size": Int(min=1, null=True), "background": ListOf(Int(min=0, max=255), length=3),
        "labels_from_subfolders": Bool(),
    },
    closed_for=("diffusion.data.datamodule.",),
)

# -- the network, its schedule and objective ----------------------------------------------------------------------------
NETWORK = Node(
    {
        "_target_": Str(), "base_channels": Int(min=1), "channel_mult": ListOf(Int(min=1), min_length=1),
        "num_res_blocks": Int(min=1), "attn_resolutions": ListOf(Int(min=1)), "dropout": Float(low=0, high=1, high_open=True),
        "norm_groups": Int(min=1), "in_channels": Int(min=1), "num_classes": Int(min=0), "image_size": Int(min=1),
    },
    closed_for=("diffusion.nets.unet.UNet",),
)
SIGMA = POSITIVE
SCHEDULE = Node(
    {
        "_target_": Str(), "input_scale": POSITIVE,
        "T": Int(min=1, hint="500"), "beta_start": Float(low=0, high=1, low_open=True, high_open=True),
        "beta_end": Float(low=0, high=1, low_open=True, high_open=True),
        "s": Float(low=0, high=1, high_open=True), "sigma_min": SIGMA, "sigma_max": SIGMA,
        "start": Float(), "end": Float(), "tau": POSITIVE, "P_mean": Float(), "P_std": POSITIVE, "rho": POSITIVE,
        "logit_mean": Float(), "logit_std": POSITIVE, "shift": POSITIVE,
    },
    closed_for=("diffusion.core.schedules.",),
)
OBJECTIVE = Node(
    {"_target_": Str(), "min_snr_gamma": Float(low=0, low_open=True, null=True), "sigma_data": POSITIVE},
    closed_for=("diffusion.core.objectives.",),
)

# -- samplers: the run's, the grids', FID's ----------------------------------------------------------------------
SAMPLER_OPTIONS = Node(
    {
        "eta": NON_NEGATIVE, "s_noise": NON_NEGATIVE, "s_churn": NON_NEGATIVE, "s_tmin": NON_NEGATIVE,
        "s_tmax": Float(low=0, infinite=True), "order": Int(min=1, max=4), "corrector": Bool(),
        "add_noise": Bool(), "variance": Choice(("posterior", "beta")),
        "restart_min": POSITIVE, "restart_max": POSITIVE, "restart_times": Int(min=0), "restart_steps": Int(min=1),
        "lower_order_final": Bool(),
    },
    null=True,
    always_closed=True,
)
SAMPLER = Node(
    {
        "_target_": Str(), "fn": Str(), "steps": Int(min=1), "spacing": Choice(SPACINGS), "rho": POSITIVE,
        "options": SAMPLER_OPTIONS, "name": Str(null=True),
        "sigma_min": Float(low=0, low_open=True, null=True), "clip_denoised": Choice(CLIP_MODES, null=True),
        "clip_percentile": Float(low=0, high=1, low_open=True),
        "levels": ListOf(POSITIVE, null=True),  # spacing=optimized; the tools read them from the file by the checkpoint
        "analytic_first_step": Bool(),
    },
    owner="fn",
    closed_for=("diffusion.core.samplers.",),
    null=True,
)
OPTIMIZER = Node(
    {
        "_target_": Str(), "_partial_": Bool(), "lr": Float(low=0, low_open=True, hint="1e-3"), "weight_decay": NON_NEGATIVE,
        "betas": ListOf(Float(low=0, high=1, high_open=True), length=2), "eps": POSITIVE, "amsgrad": Bool(),
    },
    closed_for=("torch.optim.Adam", "torch.optim.AdamW"),
)
ECT_KEYS = {
    "_target_": Str(), "P_mean": Float(), "P_std": POSITIVE, "q": Float(low=1, low_open=True), "k": NON_NEGATIVE,
    "b": NON_NEGATIVE, "c": NON_NEGATIVE, "stage_steps": Int(min=1),
}
TEACHER = ByTarget({"diffusion.training.checkpoints.TeacherCheckpoint": Node(
    {"_target_": Str(), "path": OPTIONAL_PATH}, closed_for=("diffusion.",))})
# A training method is one loss class per ``_target_`` (diffusion/core/): each names its own keys, so a typo in
# one (``+training.method.P_meen``) stops at the check instead of in Hydra's instantiate.
TRAINING_METHOD = ByTarget(
    {
        "diffusion.core.denoising_loss.DenoisingLoss": Node({"_target_": Str()}, closed_for=("diffusion.",)),
        "diffusion.core.consistency_tuning.ConsistencyTuning": Node(ECT_KEYS, closed_for=("diffusion.",)),
        "diffusion.core.consistency_tuning.ConsistencyDistillation": Node(
            {**ECT_KEYS, "teacher_steps": Int(min=1), "teacher": TEACHER}, closed_for=("diffusion.",),
        ),
        "diffusion.core.distribution_matching.DistributionMatching": Node(
            {"_target_": Str(), "teacher": TEACHER, "levels": ListOf(POSITIVE, null=True),
             "mid": Float(low=0, null=True, hint="0.821"), "fake_updates": Int(min=0)},
            closed_for=("diffusion.",),
        ),
        "diffusion.core.level_prediction.LevelPredictorLoss": Node(
            {"_target_": Str(), "weight": POSITIVE,
             "predictor": ByTarget({"diffusion.nets.level_predictor.LevelPredictor": Node(
                 {"_target_": Str(), "width": Int(min=4), "halvings": Int(min=0)}, closed_for=("diffusion.",))})},
            closed_for=("diffusion.",),
        ),
    }
)
TRAINING = Node(
    {
        "lr_warmup_steps": Int(min=0), "lr_schedule": Choice(LR_SCHEDULES), "label_dropout": Float(low=0, high=1),
        "max_nonfinite_steps": Int(min=1), "method": TRAINING_METHOD, "channels_last": Bool(), "compile": Bool(),
        "noise_conditioning": Bool(),
    },
    always_closed=True,
)
# The LightningModule's keys are interpolations of the groups above, which are checked where they are written.
MODULE = Node(
    {key: Anything() for key in ("_target_", "net", "schedule", "objective", "optimizer", "sampler", "lr_warmup_steps",
                                 "lr_schedule", "label_dropout", "max_nonfinite_steps", "method", "noise_conditioning")},
    closed_for=("diffusion.training.module.DiffusionModule",),
)


# -- Lightning's Trainer -------------------------------------------------------------------------------------------
@cache
def _strategies() -> tuple[str, ...]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


PROFILER = Node(
    {"_target_": Str(), "dirpath": OPTIONAL_PATH, "filename": Str(null=True), "extended": Bool()},
    closed_for=("lightning.pytorch.profilers.",),
)
MAX_TIME = Node({unit: Int(min=0) for unit in ("weeks", "days", "hours", "minutes", "seconds")}, always_closed=True)
BATCHES = Either((Int(min=0), Float(low=0, high=1)))  # a count of batches, or a share of the epoch
TRAINER = Node(
    {
        "_target_": Str(), "default_root_dir": PATH,
        "accelerator": Choice(("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
        "strategy": Either((Choice(_strategies), Node({"_target_": Str()}))),  # a name, or a strategy object's node with its _target_
        "devices": Either((Int(min=1, also=(-1,)), Choice(("auto",)), ListOf(Int(min=0), min_length=1),
                           Pattern(r"-1|\d+(\s*,\s*\d+)*,?", "device indices as text (\"0,1\")", "0,1"))),
        "num_nodes": Int(min=1),
        "precision": Choice(("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true",
                             "32", "16", "bf16", "64", "transformer-engine", "transformer-engine-float16")),
        "max_epochs": Int(min=1, also=(-1,), null=True), "min_epochs": Int(min=0, null=True),
        "max_steps": Int(min=1, also=(-1,), hint="1780"), "min_steps": Int(min=0, null=True), "max_time": Either((Pattern(r"\d+:\d\d:\d\d:\d\d", "DD:HH:MM:SS", "00:12:00:00"), MAX_TIME), null=True),
        "fast_dev_run": Either((Bool(), Int(min=0))),
        "limit_train_batches": Either((BATCHES,), null=True), "limit_val_batches": Either((BATCHES,), null=True),
        "limit_test_batches": Either((BATCHES,), null=True), "limit_predict_batches": Either((BATCHES,), null=True),
        "overfit_batches": BATCHES, "val_check_interval": Either((Int(min=1), Float(low=0, high=1, low_open=True)), null=True),
        "check_val_every_n_epoch": Int(min=1, null=True), "num_sanity_val_steps": Int(min=0, also=(-1,), null=True),
        "log_every_n_steps": Int(min=1, null=True), "accumulate_grad_batches": Int(min=1),
        "gradient_clip_val": Float(low=0, null=True), "gradient_clip_algorithm": Choice(("norm", "value"), null=True),
        "deterministic": Either((Bool(), Choice(("warn",))), null=True), "benchmark": Bool(null=True),
        "inference_mode": Bool(), "use_distributed_sampler": Bool(), "detect_anomaly": Bool(), "barebones": Bool(),
        "enable_checkpointing": Bool(null=True), "enable_progress_bar": Bool(null=True),
        "enable_model_summary": Bool(null=True), "sync_batchnorm": Bool(),
        "reload_dataloaders_every_n_epochs": Int(min=0), "enable_autolog_hparams": Bool(),
        "profiler": Either((Choice(("simple", "advanced", "pytorch", "xla")), PROFILER), null=True),
        "plugins": Anything(), "model_registry": Str(null=True),
    },
    closed_for=("lightning.pytorch.Trainer", "lightning.Trainer", "pytorch_lightning.Trainer"),
)

# -- callbacks, by class (the names in conf/callbacks/ are free) ---------------------------------------------------------
_CADENCE = {"fraction": CADENCE_SHARE, "every_n_steps": EVERY}
_CHECKPOINT = {
    "_target_": Str(), "dirpath": PATH, "filename": Str(), "auto_insert_metric_name": Bool(), "save_last": Bool(null=True),
    "save_top_k": Int(min=-1), "enable_version_counter": Bool(), "monitor": Str(null=True), "mode": Choice(("min", "max")),
    "verbose": Bool(), "save_weights_only": Bool(), "save_on_exception": Bool(), "every_n_epochs": Int(min=0, null=True),
    "every_n_train_steps": Int(min=0, null=True), "save_on_train_epoch_end": Bool(null=True),
}
_FID = {
    "_target_": Str(), "dirpath": PATH, "num_samples": Int(min=2), **_CADENCE, "seed": SEED, "batch_size": Int(min=1),
    "guidance": NON_NEGATIVE, "precision": Choice(CALLBACK_PRECISIONS), "labels": Choice(LABEL_MIXES),
    "samplers": Node(each=SAMPLER, always_closed=True),  # named samplers: `default` logs val/fid, NAME val/fid_NAME
    "features": FEATURES, "feature_weights": OPTIONAL_PATH, "inception_weights": OPTIONAL_PATH, "cache_dir": OPTIONAL_PATH,
    "train_settings": Anything(), "kid_subsets": Int(min=1), "kid_subset_size": Int(min=2),
    "search_samples": Int(min=2), "search_evaluations": Int(min=1),  # samplers with spacing: optimized
}
# Lightning's EMAWeightAveraging keys, shared by the framework's two EMAs.
_AVERAGING = {"device": Str(null=True), "use_buffers": Bool(), "update_every_n_steps": Int(min=1),
              "update_starting_at_step": Int(min=0, null=True), "update_starting_at_epoch": Int(min=0, null=True)}
CALLBACK = ByTarget(
    {
        "diffusion.training.callbacks.StepCheckpoint": Node({**_CHECKPOINT, **_CADENCE}, closed_for=("diffusion.",)),
        "diffusion.training.callbacks.BestCheckpoints": Node(_CHECKPOINT, closed_for=("diffusion.",)),
        "diffusion.evaluation.fid_callback.FIDCallback": Node(_FID, closed_for=("diffusion.",)),
        "diffusion.training.callbacks.SampleGrid": Node(
            {"_target_": Str(), "dirpath": PATH, "n": Int(min=1), **_CADENCE, "seed": SEED, "scale": Int(min=1),
             "precision": Choice(CALLBACK_PRECISIONS), "sampler": SAMPLER},
            closed_for=("diffusion.",),
        ),
        "diffusion.training.ema.EMA": Node(
            {"_target_": Str(), "decay": Float(low=0, high=1, low_open=True, high_open=True), "warmup": Bool(), **_AVERAGING},
            closed_for=("diffusion.",),
        ),
        "diffusion.training.ema.PowerEMA": Node(
            {"_target_": Str(), "sigma_rel": Float(low=0, high=SIGMA_REL_MAX, low_open=True, high_open=True),
             "device": Str(null=True), "use_buffers": Bool()},  # the power profile counts every step: no update_*
            closed_for=("diffusion.",),
        ),
        "diffusion.training.ema.PostHocEMA": Node(
            {"_target_": Str(), "dirpath": PATH, "sigma_rels": ListOf(POSITIVE, min_length=1),
             "num_snapshots": Int(min=1), "every_n_steps": Int(min=1, null=True)},
            closed_for=("diffusion.",),
        ),
        "diffusion.training.preemption.SaveOnSigterm": Node({"_target_": Str()}, closed_for=("diffusion.",)),
        "diffusion.training.preemption.RequeueAtStepEnd": Node({"_target_": Str()}, closed_for=("diffusion.",)),
        "diffusion.training.progress_log.progress_bar": Node(
            {"_target_": Str(), "style": Choice(PROGRESS_STYLES), "every_fraction": Float(low=0, high=1, low_open=True), "every_s": NON_NEGATIVE},
            closed_for=("diffusion.",)),
        "diffusion.training.callbacks.StepProgressBar": Node(
            {"_target_": Str(), "refresh_rate": Int(min=1), "leave": Bool()}, closed_for=("diffusion.",)),
        "lightning.pytorch.callbacks.LearningRateMonitor": Node(
            {"_target_": Str(), "logging_interval": Choice(("step", "epoch"), null=True), "log_momentum": Bool(),
             "log_weight_decay": Bool()},
            closed_for=("lightning.",),
        ),
    }
)
_LOGGER = {"_target_": Str(), "save_dir": PATH, "name": Str(null=True), "version": Str(null=True), "prefix": Str()}
LOGGER = ByTarget(
    {
        "diffusion.training.csv_logger.ResumableCSVLogger": Node(
            {**_LOGGER, "flush_logs_every_n_steps": Int(min=1)}, closed_for=("diffusion.",)),
        "lightning.pytorch.loggers.TensorBoardLogger": Node(
            {**_LOGGER, "default_hp_metric": Bool(), "log_graph": Bool(), "sub_dir": OPTIONAL_PATH}, closed_for=("lightning.",)),
        # W&B takes many settings of its own (entity, notes, ...): the group stays open, the usual keys are checked.
        "lightning.pytorch.loggers.WandbLogger": Node(
            {**_LOGGER, "project": Str(), "group": Str(null=True), "tags": ListOf(Str()), "offline": Bool(),
             "mode": Choice(("online", "offline", "disabled")), "log_model": Either((Bool(), Choice(("all",)))),
             "job_type": Str(null=True)}),
    }
)
FID_FEATURES = Node(
    {
        "features": FEATURES, "feature_weights": OPTIONAL_PATH, "inception_weights": OPTIONAL_PATH, "cache_dir": PATH,
        "train": Node(
            {"seed": SEED, "epochs": Int(min=1), "batch_size": Int(min=1), "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
             "holdout": Float(low=0, high=1, low_open=True, high_open=True), "num_features": Int(min=1),
             "min_steps": Int(min=0)},
            always_closed=True,
        ),
    },
    always_closed=True,
)
PATHS = Node({"root_dir": PATH, "data_dir": PATH, "cache_dir": PATH, "output_dir": PATH}, always_closed=True)

TRAIN = Node(
    {
        "seed": SEED, "ckpt_path": OPTIONAL_PATH, "tags": ListOf(Str()), "wandb_artifact": Bool(), "init_from": OPTIONAL_PATH,
        "optimized_metric": Str(),
        "validation": Node(_CADENCE, always_closed=True),
        "training": TRAINING,
        "final_samples": Node({"n": Int(min=1), "seed": SEED}, always_closed=True),
        "data": DATA, "network": NETWORK, "schedule": SCHEDULE, "objective": OBJECTIVE, "sampler": SAMPLER, "module": MODULE,
        "optimizer": OPTIMIZER, "trainer": TRAINER, "logger": Node(each=LOGGER, always_closed=True, null=True),
        "fid_features": FID_FEATURES, "callbacks": Node(each=CALLBACK, always_closed=True, null=True), "paths": PATHS,
        "hydra": Anything(),
    },
    always_closed=True,
)
SAMPLE = Node(
    {
        "ckpt": PATH, "n": Int(min=1), "seed": SEED, "out": PATH, "steps": Int(min=1, null=True),
        "label": Str(null=True),  # a class name or index: only the checkpoint knows its classes
        "guidance": NON_NEGATIVE, "trajectory": Bool(), "batch_size": Int(min=1), "device": DEVICE,
        "precision": Choice(SAMPLING_PRECISIONS), "overwrite": Bool(), "trust": ListOf(Str()), "sampler": SAMPLER,
        "level": Choice(LEVELS, null=True), "level_spread": POSITIVE, "hydra": Anything(),
    },
    always_closed=True,
)
EVALUATE = Node(
    {
        "samples": PATH, "out": OPTIONAL_PATH, "reference": Choice(("val", "train")), "seed": SEED,
        "kid_subsets": Int(min=1), "kid_subset_size": Int(min=2), "prc_neighborhood": Int(min=1), "isc": Bool(),
        "batch_size": Int(min=1), "device": DEVICE, "wandb": Either((Bool(), Choice(("auto",)))),
        "data": DATA, "paths": PATHS, "fid_features": FID_FEATURES, "hydra": Anything(),
    },
    always_closed=True,
)
TRAIN_FEATURES = Node(
    {"seed": SEED, "out": OPTIONAL_PATH, "force": Bool(), "data": DATA, "paths": PATHS, "fid_features": FID_FEATURES, "hydra": Anything()},
    always_closed=True,
)
SCHEMAS = {"train": TRAIN, "sample": SAMPLE, "evaluate": EVALUATE, "train_features": TRAIN_FEATURES}
