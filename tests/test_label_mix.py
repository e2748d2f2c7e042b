"""Class labels of generated images follow the data's class mix (FID against an imbalanced reference).

FID compares generated images with the validation split in its own class proportions; labels cycling uniformly
over the classes would add the class-mix mismatch to the figure. On an imbalanced toy label set the drawn label
shares must match the data's within rounding, in the FID callback, sampler_fid and ``sample.py label=data``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusion.core.errors import ConfigError
from diffusion.core.labels import class_cycle, class_mix, sample_labels
from diffusion.data.datamodule import SpriteDataModule
from diffusion.evaluation.fid_callback import FIDCallback
from diffusion.tools.sample import parse_labels

COUNTS = [120, 50, 20, 10]  # an imbalanced toy label set: shares 0.6, 0.25, 0.1, 0.05


def shares_within_rounding(labels: torch.Tensor, counts: list[int]) -> None:
    """Every class drawn n * share times to within one label, in the whole sequence and in every prefix."""
    expected = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    got = torch.nn.functional.one_hot(labels, len(counts)).double().cumsum(0)
    prefix = torch.arange(1, len(labels) + 1, dtype=torch.float64)[:, None] * expected
    worst = (got - prefix).abs().max().item()
    assert worst < 1, f"label counts {got[-1].tolist()} stray {worst:.2f} from {(prefix[-1]).tolist()}"


@pytest.mark.parametrize("n", [1, 7, 20, 333, 1000])
def test_class_mix_matches_the_shares_within_rounding(n):
    labels = class_mix(n, COUNTS)
    assert labels.shape == (n,) and labels.dtype == torch.long
    shares_within_rounding(labels, COUNTS)
    assert torch.equal(class_mix(n, COUNTS), labels)  # deterministic: the same labels every measurement
    # A class with no images is never drawn; the uniform cycle would draw it a quarter of the time.
    assert (class_mix(n, [3, 0, 1, 0]) % 2 == 0).all()
    if n >= 20:
        with pytest.raises(AssertionError):
            shares_within_rounding(class_cycle(n, len(COUNTS)), COUNTS)


def test_sample_labels_choices():
    assert torch.equal(sample_labels(10, 4, COUNTS, "uniform"), class_cycle(10, 4))
    assert torch.equal(sample_labels(10, 4, COUNTS, "data"), class_mix(10, COUNTS))
    assert sample_labels(10, 0, None, "data") is None
    with pytest.raises(ConfigError, match="labels=uniform"):
        sample_labels(10, 4, None, "data")  # an old checkpoint: no stored counts
    with pytest.raises(ConfigError, match="choose one of data, uniform"):
        sample_labels(10, 4, COUNTS, "balanced")
    with pytest.raises(ConfigError, match="3 class counts for a model of 4"):
        sample_labels(10, 4, COUNTS[:3], "data")


class Imbalanced(SpriteDataModule):
    """200 tiny images with the COUNTS labels, shuffled; the split keeps a quarter for validation."""

    def load(self):
        labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
        labels = labels[np.random.default_rng(0).permutation(len(labels))]
        images = np.zeros((len(labels), 4, 4, 3), dtype=np.uint8)
        return images, labels.astype(np.int64), [f"class{c}" for c in range(len(COUNTS))]


@pytest.fixture
def data():
    data = Imbalanced(batch_size=8, val_fraction=0.25)
    data.setup()
    return data


def test_datamodule_class_counts(data):
    train, val = data.class_counts("train"), data.class_counts("val")
    assert sum(train) == 150 and sum(val) == 50
    assert [t + v for t, v in zip(train, val)] == COUNTS
    assert val == torch.bincount(data.val_set.tensors[1], minlength=4).tolist()


class StubQuality:
    """Stands in for ImageQuality: the callback's label drawing is under test, not the metric."""

    has_real = True

    def to(self, device):
        return self

    def update_fake(self, x):
        pass

    def reset_fake(self):
        pass

    def compute(self):
        return {"fid": 1.0, "kid_mean": 0.0, "kid_std": 0.0, "n_real": 50, "n_fake": 0}


class StubModule:
    num_classes = len(COUNTS)
    device = torch.device("cpu")

    def __init__(self):
        self.labels = []

    def sample(self, count, labels=None, **kwargs):
        self.labels.append(labels)
        self.bf16 = kwargs.get("bf16", False)
        return torch.zeros(count, 3, 4, 4)


def measure(callback, data, rank=0, world=1, precision="32-true", module=None):
    trainer = SimpleNamespace(global_rank=rank, world_size=world, datamodule=data, current_epoch=0, global_step=3,
                              precision=precision)
    module = module or StubModule()
    result = callback.measure(trainer, module)
    return trainer, result, torch.cat(module.labels)


@pytest.mark.parametrize(("choice", "trainer_precision", "bf16"), [
    ("trainer", "bf16-mixed", True), ("trainer", "32-true", False), ("32", "bf16-mixed", False), ("bf16", "32-true", True),
])
def test_fid_samples_in_the_precision_asked_and_records_it(tmp_path, data, choice, trainer_precision, bf16):
    callback = FIDCallback(dirpath=str(tmp_path), num_samples=20, batch_size=10, precision=choice)
    callback.quality, callback.version = StubQuality(), "stub"
    module = StubModule()
    trainer, result, _ = measure(callback, data, precision=trainer_precision, module=module)
    assert module.bf16 is bf16 and result["precision"] == ("bf16" if bf16 else "32")
    callback._record(trainer, result)
    assert json.loads((tmp_path / "fid.json").read_text())["history"][-1]["precision"] == result["precision"]


def test_a_sampling_callback_refuses_an_unknown_precision(tmp_path):
    from diffusion.training.callbacks import SampleGrid

    with pytest.raises(ConfigError, match="callbacks.fid.precision=16 is not one of trainer, 32, bf16"):
        FIDCallback(dirpath=str(tmp_path), precision="16")
    with pytest.raises(ConfigError, match="callbacks.sample_grid.precision=half"):
        SampleGrid(str(tmp_path), sampler=None, precision="half")


@pytest.mark.parametrize("mix", ["data", "uniform"])
def test_fid_callback_draws_the_reference_mix_and_records_it(tmp_path, data, mix):
    callback = FIDCallback(dirpath=str(tmp_path), num_samples=200, batch_size=64, labels=mix)
    callback.quality, callback.version = StubQuality(), "stub"
    trainer, result, labels = measure(callback, data)
    assert len(labels) == 200
    if mix == "data":
        shares_within_rounding(labels, data.class_counts("val"))
    else:
        assert torch.equal(labels, class_cycle(200, 4))
    # Two processes draw the single process's labels between them.
    halves = [measure(callback, data, rank, 2)[2] for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), labels)

    callback._record(trainer, result)
    record = json.loads((tmp_path / "fid.json").read_text())
    assert record["labels"] == mix and record["history"][-1]["labels"] == mix


def test_fid_callback_refuses_an_unknown_mix(tmp_path):
    with pytest.raises(ConfigError, match="callbacks.fid.labels='balanced'"):
        FIDCallback(dirpath=str(tmp_path), labels="balanced")
    # A data module of the user's own without class_counts: refused at setup, before any training.
    own = SimpleNamespace(num_classes=3, real_images=lambda split="val": torch.zeros(10, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="use callbacks.fid.labels=uniform"):
        FIDCallback(dirpath=str(tmp_path)).setup(SimpleNamespace(datamodule=own, world_size=1), StubModule(), "fit")


def test_sample_label_data_follows_the_stored_training_counts():
    module = SimpleNamespace(num_classes=4, class_names=["a", "b", "c", "d"], class_counts=COUNTS)
    labels = parse_labels("data", 100, module)
    shares_within_rounding(labels, COUNTS)
    assert torch.equal(parse_labels(None, 8, module), class_cycle(8, 4))  # the default still shows every class
    old = SimpleNamespace(num_classes=4, class_names=["a", "b", "c", "d"], class_counts=None)
    with pytest.raises(ConfigError, match="labels=uniform"):
        parse_labels("data", 100, old)
    named = SimpleNamespace(num_classes=2, class_names=["data", "other"], class_counts=[1, 9])
    assert (parse_labels("data", 5, named) == 0).all()  # a class named "data" keeps its name


def test_checkpoints_carry_the_class_counts_and_old_ones_still_load(tmp_path):
    from conftest import TINY_MODEL, compose_config

    from diffusion.training.builders import build_module
    from diffusion.training.checkpoints import module_from_checkpoint

    cfg = compose_config("train", TINY_MODEL + [f"paths.output_dir={tmp_path}"])
    module = build_module(cfg, 4, 16, ["a", "b", "c", "d"], COUNTS)
    checkpoint = {"state_dict": module.state_dict(), "diffusion": module.checkpoint_info()}
    assert json.loads(json.dumps(checkpoint["diffusion"]))["class_counts"] == COUNTS  # JSON: .safetensors metadata
    assert module_from_checkpoint(checkpoint).class_counts == COUNTS
    del checkpoint["diffusion"]["class_counts"]  # a checkpoint written before the counts were stored
    old = module_from_checkpoint(checkpoint)
    assert old.class_counts is None and "class_counts" not in old.checkpoint_info()


def test_a_training_run_stores_its_counts_and_records_the_mix(tiny_run):
    """train.py end to end: the checkpoint and its .safetensors export carry the training split's class counts,
    ``sample.py label=data`` follows them, and fid.json says which mix its figures used."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint

    info = load_checkpoint(tiny_run.ckpt)["diffusion"]
    data = instantiate(OmegaConf.create(info["config"]).data)
    assert info["class_counts"] == data.class_counts("train") and sum(info["class_counts"]) > 0
    assert load_checkpoint(tiny_run.export)["diffusion"]["class_counts"] == info["class_counts"]
    module = module_from_checkpoint(load_checkpoint(tiny_run.export))
    shares_within_rounding(parse_labels("data", 50, module), info["class_counts"])
    record = json.loads((tiny_run.run_dir / "fid.json").read_text())
    assert record["labels"] == "data" and all(entry["labels"] == "data" for entry in record["history"])
