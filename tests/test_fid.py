"""FID/KID with the sprite feature network: torchmetrics in training, torch-fidelity offline, DDP."""

from __future__ import annotations

import json
import math
import os

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, compose_config
from test_kid import unbiased_mmd2

from diffusion.core.errors import ConfigError
from diffusion.core.sampling import Sampler
from diffusion.data import images as image_files
from diffusion.data.datamodule import ProceduralSprites
from diffusion.data.procedural import generate_sprites
from diffusion.evaluation.features import ARCH_VERSION, load_weights, save_weights, train_feature_net
from diffusion.evaluation.metrics import ImageQuality, as_uint8_nchw, build_feature_net, fidelity_metrics, shard
from diffusion.training.callbacks import SampleGrid


@pytest.fixture(scope="module")
def sprites() -> torch.Tensor:
    images, _ = generate_sprites(600, seed=5)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A feature network trained for a few dozen steps, saved as the framework saves them."""
    images, labels = generate_sprites(400, seed=6)
    net = train_feature_net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels), 5, batch_size=32)
    net.version = f"{ARCH_VERSION}-test0001"
    return str(save_weights(net, tmp_path_factory.mktemp("features") / "net.safetensors"))


def perturbed(uint8: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """[-1, 1] images with Gaussian noise of standard deviation sigma (in [-1, 1] units)."""
    x = uint8.float() / 127.5 - 1
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def test_as_uint8_nchw_matches_saved_samples():
    x = torch.linspace(-1.2, 1.2, 3 * 16 * 16 * 4).reshape(4, 3, 16, 16)
    assert np.array_equal(as_uint8_nchw(x).permute(0, 2, 3, 1).numpy(), image_files.to_uint8(x))
    assert as_uint8_nchw(x).dtype == torch.uint8 and int(as_uint8_nchw(x).min()) == 0 and int(as_uint8_nchw(x).max()) == 255


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(sprites, weights):
    real = sprites[:300]
    quality = ImageQuality(load_weights(weights), kid_subsets=2, kid_subset_size=300)
    quality.update_real(real)
    quality.update_fake(real.float() / 127.5 - 1)  # the same images, through the [-1, 1] path
    same = quality.compute()
    quality.reset_fake()
    # FID ~0; KID of two random halves of one set is -2 (k(x, x) - k(x, y)) / n on average (the chance of drawing
    # an image on both sides): <= 0, and these seeded draws are
    assert abs(same["fid"]) < 1e-3 and same["kid_mean"] <= 1e-6, same
    assert same["n_real"] == same["n_fake"] == 300

    fids, kids = [same["fid"]], [same["kid_mean"]]
    for sigma in (0.05, 0.1, 0.2, 0.4):
        quality.update_fake(perturbed(real, sigma))
        result = quality.compute()
        quality.reset_fake()
        assert result["n_real"] == 300, "the reference statistics must be kept, not re-added"
        fids.append(result["fid"])
        kids.append(result["kid_mean"])
    assert all(a < b for a, b in zip(fids, fids[1:])), f"FID not increasing with noise: {fids}"
    # KID's unbiased estimate wobbles around 0 for near-identical sets; beyond that it grows too
    assert kids[0] < kids[2] < kids[3] < kids[4], f"KID not increasing with noise: {kids}"
    # other sprites of the same kind, unperturbed: a small figure, below heavy noise on the same sprites
    quality.update_fake(sprites[300:])
    other = quality.compute()["fid"]
    assert same["fid"] < other < fids[-1]


def test_torchmetrics_and_torch_fidelity_agree(sprites, weights):
    real, fake = sprites[:250], as_uint8_nchw(perturbed(sprites[250:450], 0.1))
    n = len(fake)
    quality = ImageQuality(load_weights(weights), kid_subsets=3, kid_subset_size=n)
    quality.update_real(real)
    quality.update_fake(fake)
    ours = quality.compute()
    theirs = fidelity_metrics(fake, real, feature_weights=weights, kid_subsets=3, kid_subset_size=n, isc=True)
    assert math.isclose(ours["fid"], theirs["fid"], rel_tol=1e-3), (ours, theirs)
    assert 0 <= theirs["precision"] <= 1 and 0 <= theirs["recall"] <= 1 and 1 <= theirs["isc_mean"] <= 5
    # KID's random subsets differ (torch.randperm, real set first, against numpy's RandomState, samples first): each
    # library's figure is the unbiased MMD^2 of its own draws, min(1000, 250 // 2, 200 // 2) = 100 from each set
    # (both compute in float32, which leaves ~1e-6 of cancellation noise: compare a KID well above that)
    fake = as_uint8_nchw(perturbed(sprites[250:450], 0.4))
    quality = ImageQuality(load_weights(weights), kid_subsets=2, kid_subset_size=1000, seed=0)
    quality.update_real(real)
    quality.update_fake(fake)
    ours = quality.compute()
    theirs = fidelity_metrics(fake, real, feature_weights=weights, kid_subsets=2, kid_subset_size=1000, prc=False, seed=0)
    with torch.no_grad():
        f_real, f_fake = (load_weights(weights)(x).double().numpy() for x in (real, fake))
    torch.manual_seed(0)
    torch_draws = [(torch.randperm(250)[:100].numpy(), torch.randperm(200)[:100].numpy()) for _ in range(2)]
    rng = np.random.RandomState(0)
    numpy_draws = [tuple(reversed([rng.choice(200, 100, replace=False), rng.choice(250, 100, replace=False)])) for _ in range(2)]
    for figures, draws in ((ours, torch_draws), (theirs, numpy_draws)):
        by_hand = np.mean([unbiased_mmd2(f_real[r], f_fake[f]) for r, f in draws])
        assert figures["kid_mean"] > 1e-4 and math.isclose(figures["kid_mean"], by_hand, rel_tol=1e-3), (figures, by_hand)


def test_inception_without_weights_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty hub cache
    with pytest.raises(ConfigError) as err:
        build_feature_net("inception")
    message = str(err.value)
    assert "\n" not in message and "weights-inception-2015-12-05-6726825d.pth" in message and "fid_features.inception_weights" in message
    with pytest.raises(ConfigError, match="no such file"):
        build_feature_net("inception", inception_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="one of sprite, inception"):
        build_feature_net("clip")
    assert not (tmp_path / "hub").exists(), "nothing may be downloaded or created"


# -- multi-process ---------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init_file: str, weights: str, real: torch.Tensor, fake: torch.Tensor, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        quality = ImageQuality(load_weights(weights), kid_subsets=5, kid_subset_size=60, seed=3)
        quality.update_real(real[shard(len(real), rank, world)], batch_size=50)  # uneven shares, several updates
        mine = fake[shard(len(fake), rank, world)]
        quality.update_fake(mine, batch_size=40)
        first = quality.compute()
        quality.reset_fake()
        quality.update_fake(mine, batch_size=1000)  # a second round reuses the real statistics
        second = quality.compute()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"first": first, "second": second}, f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_give_the_single_process_figure(tmp_path, sprites, weights):
    real, fake = sprites[:301], perturbed(sprites[301:501], 0.1)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), weights, real, fake, str(tmp_path)), nprocs=2, join=True)
    single = ImageQuality(load_weights(weights), kid_subsets=5, kid_subset_size=60, seed=3)
    single.update_real(real)
    single.update_fake(fake)
    expected = single.compute()
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1], "every process must get the same figures"
    for got in (results[0]["first"], results[0]["second"]):
        assert got["n_real"] == 301 and got["n_fake"] == 200
        for key in ("fid", "kid_mean", "kid_std"):
            assert math.isclose(got[key], expected[key], rel_tol=1e-5, abs_tol=1e-7), (key, got, expected)


# -- the callback in a tiny training run ------------------------------------------------------------


def test_experiment_ect_adds_named_samplers_to_the_fid_callback():
    """experiment=ect measures the consistency sampler at 1 step (val/fid, fid.json) and, as more entries of the
    callback's samplers, at 2 steps (val/fid_2step, fid_2step.json, as the cloned callback did at 44e540d) and 4
    (fid_4step.json): the learning curve at 1, 2 and 4 steps of issue 19."""
    from hydra.utils import instantiate

    fid = instantiate(compose_config("train", ["paths.output_dir=.", "experiment=ect"]).callbacks.fid)
    assert list(fid.samplers) == ["default", "2step", "4step"]
    assert repr(fid.samplers["4step"]) == "Sampler(consistency, steps=4, spacing=karras, nfe=4)"
    assert repr(fid.samplers["default"]) == "Sampler(consistency, steps=1, spacing=karras, nfe=1)"
    assert repr(fid.samplers["2step"]) == "Sampler(consistency, steps=2, spacing=karras, nfe=2)"
    assert fid.samplers["2step"].sigma_min == 0.821 and fid.history_path("2step").name == "fid_2step.json"
    plain = instantiate(compose_config("train", ["paths.output_dir=."]).callbacks.fid)
    assert list(plain.samplers) == ["default"] and plain.sampler.fn.endswith("sample_dpmpp_2m_sde") and plain.sampler.steps == 10


def test_a_checkpoint_from_before_the_samplers_mapping_keeps_its_2step_history(tmp_path):
    """experiment=ect before issue 20 stored a second FIDCallback under its suffix's key: resumed now, its history
    is the `2step` sampler's and no state is left unclaimed."""
    from diffusion.core.sampling import Sampler
    from diffusion.evaluation.fid_callback import FIDCallback
    from diffusion.training.resume import match_callback_states

    samplers = {"default": Sampler("consistency", steps=1), "2step": Sampler("consistency", steps=2)}
    callback = FIDCallback(dirpath=str(tmp_path), samplers=samplers)
    one, two = [{"step": 10, "fid": 50.0}], [{"step": 10, "fid": 40.0}]
    checkpoint = {"callbacks": {"FIDCallback": {"history": one}, "FIDCallback{'suffix': '_2step'}": {"history": two}}}
    match_callback_states(checkpoint, [callback])
    assert list(checkpoint["callbacks"]) == [callback.state_key]
    callback.load_state_dict(checkpoint["callbacks"][callback.state_key])
    assert callback.histories == {"default": one, "2step": two}


def test_callback_logs_fid_in_a_tiny_run(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from diffusion.evaluation.fid_callback import FIDCallback
    from diffusion.evaluation.plots import plot_run
    from diffusion.training.builders import build_module

    cfg = compose_config("train", TINY_MODEL + ["paths.output_dir=" + str(tmp_path)])
    data = ProceduralSprites(n=200, cache_dir=None, batch_size=32, val_fraction=0.25)
    data.setup("fit")
    module = build_module(cfg, data.num_classes, data.image_size, data.class_names)
    fid = FIDCallback(
        dirpath=str(tmp_path),
        samplers={"fast": Sampler("euler", steps=1), "default": Sampler("dpmpp_2m", steps=2, spacing="karras")},
        num_samples=30,
        batch_size=16,
        cache_dir=str(tmp_path / "features"),
        train_settings={"batch_size": 32, "min_steps": 10},
        kid_subsets=5,
    )
    grid = SampleGrid(str(tmp_path / "samples"), Sampler("dpmpp_2m", steps=2, spacing="karras"), n=16)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=2,
        logger=CSVLogger(str(tmp_path), name="csv", version=""),
        callbacks=[fid, grid],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)

    # the default sampler under the plain names, another entry under its own
    for key in ("val/fid", "val/kid_mean", "val/kid_std", "val/fid_seconds", "val/fid_fast", "val/kid_mean_fast", "val/fid_seconds_fast"):
        assert key in trainer.callback_metrics and math.isfinite(float(trainer.callback_metrics[key])), key
    fast = json.loads((tmp_path / "fid_fast.json").read_text())["history"]
    assert [h["sampler"] for h in fast] == ["Sampler(euler, steps=1, spacing=schedule, nfe=1)"] * 2
    record = json.loads((tmp_path / "fid.json").read_text())
    assert record["features"].startswith(f"{ARCH_VERSION}-") and len(record["history"]) == 2
    assert [h["epoch"] for h in record["history"]] == [0, 1]
    assert all(h["n_real"] == 50 and h["n_fake"] == 30 and h["seconds"] > 0 for h in record["history"])
    assert list((tmp_path / "features").glob(f"{record['features']}.safetensors"))
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/fid" in header and "val/kid_mean" in header

    written = {p.name for p in plot_run(tmp_path)}
    assert written == {"loss.png", "fid.png", "samples_over_epochs.png"}
    for name in written:
        assert (tmp_path / "plots" / name).stat().st_size > 1000


# -- offline evaluation ------------------------------------------------------------------------------


def test_evaluate_npz_and_png_folder(tmp_path, sprite_dir):
    from diffusion.tools.evaluate import evaluate, load_samples

    images, _ = generate_sprites(40, seed=9)
    np.savez(tmp_path / "samples.npz", images=images, labels=np.zeros(40, dtype=np.int64))
    overrides = ["data=sprites", f"data.dir={sprite_dir}", "data.val_fraction=0.25", "data.batch_size=16", f"fid_features.cache_dir={tmp_path / 'cache'}", "fid_features.train.batch_size=32", "fid_features.train.min_steps=10"]
    cfg = compose_config("evaluate", overrides + [f"samples={tmp_path}"])  # a folder holding samples.npz
    report = evaluate(cfg)
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written == report
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall"):
        assert math.isfinite(report[key]), key
    assert report["n_samples"] == 40 and report["n_reference"] == 40 and report["features"].startswith(f"{ARCH_VERSION}-")

    pngs = tmp_path / "pngs"
    for i, im in enumerate(images[:12]):
        image_files.save_png(im, pngs / f"{i:03d}.png")
    cfg = compose_config("evaluate", overrides + [f"samples={pngs}", f"out={tmp_path / 'png.json'}"])
    report = evaluate(cfg)
    assert report["n_samples"] == 12 and report["features"] == written["features"]
    loaded, _ = load_samples(pngs)
    assert torch.equal(loaded, torch.from_numpy(images[:12]).permute(0, 3, 1, 2))

    with pytest.raises(ConfigError, match="not found"):
        load_samples(tmp_path / "nothing.npz")
    np.savez(tmp_path / "nchw.npz", images=images.transpose(0, 3, 1, 2))
    with pytest.raises(ConfigError, match=r"\(N, H, W, 3\)"):
        load_samples(tmp_path / "nchw.npz")
    np.savez(tmp_path / "other.npz", pictures=images)
    with pytest.raises(ConfigError, match="no `images` array"):
        load_samples(tmp_path / "other.npz")


def test_callback_turns_itself_off_on_unlabelled_data(sprite_dir, tmp_path):
    from types import SimpleNamespace

    from diffusion.data.datamodule import NpySprites
    from diffusion.evaluation.fid_callback import FIDCallback

    data = NpySprites(dir=str(sprite_dir), labels=None, batch_size=16, val_fraction=0.1)
    trainer = SimpleNamespace(datamodule=data, world_size=1, is_global_zero=True, loggers=[], sanity_checking=False)
    callback = FIDCallback(dirpath=str(tmp_path), cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="fid_features.feature_weights=PATH"):
        callback.setup(trainer, None, "fit")
    assert callback.cadence.off and callback.quality is None and not callback.due(trainer)
    with pytest.raises(ConfigError, match="one of sprite, inception"):
        FIDCallback(dirpath=str(tmp_path), features="clip")
