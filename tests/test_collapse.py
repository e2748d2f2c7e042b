"""The course's "blobs" on a trained network: DDPM without the added noise (z = 0) loses the spread and the detail.

A tiny U-Net is trained here for a few hundred steps on procedural sprites (about 15 s on one core); the same
starting noise is then sampled with DDPM twice, with and without the noise of Algorithm 2, line 4. The figures on
the fully trained main-job models are in BENCHMARKS.md, measured with ``python -m diffusion.tools.collapse CKPT`` and
``python -m diffusion.tools.sampler_fid CKPT --collapse``; the exact-denoiser version of this test is in
test_exact_denoiser.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, compose_config

from diffusion.core.denoising_loss import DenoisingLoss
from diffusion.data.procedural import generate_sprites
from diffusion.tools.collapse import ddpm_both_ways, detail, spread
from diffusion.training.builders import build_module

STEPS, BATCH = 300, 32


@pytest.fixture(scope="module")
def trained():
    images, _ = generate_sprites(256, seed=0)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    cfg = compose_config("train", [*TINY_MODEL, "paths.output_dir=."])
    torch.manual_seed(0)
    module = build_module(cfg, 0, 16, [])
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
    batches = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        x0 = data[torch.randint(0, len(data), (BATCH,), generator=batches)]
        loss = DenoisingLoss.at(module.denoiser, x0, module.schedule.sample_sigma(BATCH), torch.randn_like(x0)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval(), data, loss.item()


def test_ddpm_without_noise_collapses_on_a_trained_model(trained):
    module, data, final_loss = trained
    assert final_loss < 0.3  # it did learn (an untrained network's eps loss is about 1)
    draws = ddpm_both_ways(module, 32, seed=0)  # DDPM over all 500 levels, the same noise both ways
    noisy, blobs = draws[True], draws[False]
    print(f"spread data {spread(data):.3f} noisy {spread(noisy):.3f} z=0 {spread(blobs):.3f}; "
          f"detail data {detail(data):.3f} noisy {detail(noisy):.3f} z=0 {detail(blobs):.3f}")
    # With the noise, samples are as varied and as sharp as the data; without it, they move toward one another
    # (the mean) and lose their edges.
    assert spread(noisy) > 0.8 * spread(data) and detail(noisy) > 0.8 * detail(data)
    assert spread(blobs) < 0.8 * spread(noisy)
    assert detail(blobs) < 0.75 * detail(noisy)


def test_the_collapse_command_prints_both_ways_and_writes_the_picture(tiny_run, tmp_path, capsys):
    from diffusion.tools import collapse

    out = tmp_path / "collapse.png"
    rows = collapse.run(collapse.build_parser().parse_args([str(tiny_run.ckpt), "--n", "4", "--out", str(out)]))
    assert [r["add_noise"] for r in rows] == [True, False]
    # The 4-step tiny run's samples are clamped noise: per-pixel variance across samples near the bound 1 of values in
    # [-1, 1] (n/(n-1) with the unbiased estimate), neighbours almost independent, |a - b| about 1 (measured: spread
    # 0.96 and 0.94, detail 1.00 and 1.00). Validation sprites are far smoother (spread 0.34, detail 0.68).
    for r in rows:
        assert 0.7 < r["spread"] < 4 / 3 and 0.8 < r["detail"] < 1.2, r
    printed = capsys.readouterr().out
    assert "validation images: spread 0.339, detail 0.679" in printed
    assert f"DDPM add_noise=false: spread {rows[1]['spread']:.3f}, detail {rows[1]['detail']:.3f}" in printed
    from PIL import Image

    from diffusion.data.images import grid

    strip = grid(np.zeros((4, 16, 16, 3), np.uint8), ncols=16)
    assert Image.open(out).size == (strip.shape[1], 2 * strip.shape[0] + 4)  # with noise above, without below
