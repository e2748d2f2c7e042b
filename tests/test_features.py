"""The sprite feature network for FID: inputs it accepts, deterministic training, cached weights."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import ROOT, compose_config, describe

from diffusion.core.errors import ConfigError
from diffusion.data.datamodule import NpySprites, ProceduralSprites
from diffusion.data.procedural import generate_sprites
from diffusion.evaluation.features import (
    ARCH_VERSION,
    SpriteFeatureNet,
    TrainSettings,
    load_or_train,
    load_weights,
    save_weights,
    train_feature_net,
)

FAST = {"epochs": 1, "batch_size": 32, "min_steps": 0}


@pytest.fixture(scope="module")
def sprites():
    images, labels = generate_sprites(400, seed=3)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def test_forward_takes_uint8_of_any_size_and_floats():
    torch.manual_seed(0)
    net = SpriteFeatureNet(num_classes=5).eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    features = net(x)
    assert features.shape == (4, net.num_features) == (4, 128) and features.dtype == torch.float32
    # floats in [0, 1] are the same images
    torch.testing.assert_close(net(x.float() / 255), features, atol=1e-5, rtol=1e-5)
    # torchmetrics probes with a 299x299 uint8 image; nearest-enlarged sprites shrink back exactly
    assert net(torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)).shape == (1, 128)
    big = x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    torch.testing.assert_close(net(big), features, atol=1e-5, rtol=1e-5)
    assert net(torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)).shape == (2, 128)


def test_training_is_deterministic_and_learns(sprites):
    images, labels = sprites
    before = torch.get_rng_state()
    a = train_feature_net(images, labels, 5, seed=1, epochs=3, batch_size=32, holdout=0.2, min_steps=0)
    assert torch.equal(torch.get_rng_state(), before), "training must leave the global random state alone"
    b = train_feature_net(images, labels, 5, seed=1, epochs=3, batch_size=32, holdout=0.2, min_steps=0)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert a.info["n_holdout"] == 80 and a.info["accuracy"] == b.info["accuracy"]
    assert a.info["accuracy"] > 0.5, f"held-out accuracy {a.info['accuracy']} barely above chance (0.2)"
    c = train_feature_net(images, labels, 5, seed=2, epochs=1, batch_size=32, min_steps=0)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_weights_round_trip(tmp_path, sprites):
    images, labels = sprites
    net = train_feature_net(images[:64], labels[:64], 5, epochs=1, batch_size=32, min_steps=0)
    net.version = f"{ARCH_VERSION}-deadbeef"
    path = save_weights(net, tmp_path / "w.safetensors", ["a", "b", "c", "d", "e"])
    loaded = load_weights(path)
    assert loaded.version == net.version and loaded.info["class_names"] == ["a", "b", "c", "d", "e"]
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = images[:8]
    torch.testing.assert_close(loaded(x), net.eval()(x))
    with pytest.raises(ConfigError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a weights file")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_weights(tmp_path / "junk.safetensors")


def test_load_or_train_caches_by_content_hash(tmp_path, monkeypatch):
    data = ProceduralSprites(n=200, generator_seed=1, cache_dir=None, batch_size=16, val_fraction=0.1)
    net = load_or_train(data, tmp_path, settings=FAST)
    assert net.version.startswith(f"{ARCH_VERSION}-") and len(net.version.rsplit("-", 1)[1]) == 8
    path = tmp_path / f"{net.version}.safetensors"
    assert path.is_file() and path.stat().st_size < 1_000_000
    assert net.info["n_train"] + net.info["n_holdout"] == 180  # the training split only

    import diffusion.evaluation.features as features

    monkeypatch.setattr(features, "train_feature_net", lambda *a, **k: pytest.fail("cached weights were retrained"))
    again = load_or_train(ProceduralSprites(n=200, generator_seed=1, cache_dir=None, batch_size=16, val_fraction=0.1), tmp_path, settings=FAST)
    assert again.version == net.version
    monkeypatch.undo()
    # other settings or other data: another version
    other = load_or_train(data, tmp_path, settings={**FAST, "seed": 1})
    assert other.version != net.version
    data2 = ProceduralSprites(n=200, generator_seed=2, cache_dir=None, batch_size=16, val_fraction=0.1)
    assert load_or_train(data2, tmp_path, settings=FAST).version not in (net.version, other.version)
    # an explicit weights file wins, whatever the data
    assert load_or_train(data2, tmp_path, weights=path).version == net.version


def test_unlabelled_data_asks_for_weights(tmp_path, sprite_dir):
    data = NpySprites(dir=str(sprite_dir), labels=None, batch_size=16)
    with pytest.raises(ConfigError, match="fid_features.feature_weights=PATH") as err:
        load_or_train(data, tmp_path, settings=FAST)
    assert "\n" not in str(err.value)


def test_config_defaults_match_code_defaults():
    """The callback without a `metrics` config uses TrainSettings' defaults: both must name the same network."""
    cfg = compose_config("train_features")
    assert dict(cfg.fid_features.train) == dataclasses.asdict(TrainSettings())
    assert cfg.fid_features.features == "sprite"


def test_features_cli(tmp_path, sprite_dir):
    cache = tmp_path / "cache"
    args = ["data=sprites", f"data.dir={sprite_dir}", f"fid_features.cache_dir={cache}", "fid_features.train.batch_size=32", "fid_features.train.min_steps=10", f"out={tmp_path / 'w.safetensors'}"]
    bad_args = ["data=sprites", f"data.dir={sprite_dir}", "data.labels=null", f"fid_features.cache_dir={tmp_path / 'cache-bad'}"]

    def run(arguments):
        return subprocess.run([sys.executable, "-m", "diffusion.tools.train_features", *arguments], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:  # the two commands side by side: the suite's time
        proc, bad = pool.map(run, [args, bad_args])
    assert proc.returncode == 0, describe(proc)
    assert "version:  sprite-cnn-v1-" in proc.stdout and "accuracy:" in proc.stdout
    assert (tmp_path / "w.safetensors").is_file() and len(list(cache.glob("sprite-cnn-v1-*.safetensors"))) == 1
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "fid_features.feature_weights" in bad.stderr, describe(bad)


def test_noise_moves_features_more_than_nothing(sprites):
    """Sanity for FID's use: features of a sprite are stable and move when the pixels do."""
    images, labels = sprites
    net = train_feature_net(images, labels, 5, epochs=1, batch_size=32, min_steps=0)
    clean = net(images[:50])
    gen = torch.Generator().manual_seed(0)
    noisy = (images[:50].float() + 40 * torch.randn(images[:50].shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    assert torch.equal(net(images[:50]), clean)
    assert (net(noisy) - clean).norm() > 0.1 * clean.norm()
    assert np.isfinite(clean.numpy()).all()
