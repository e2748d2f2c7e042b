"""Smoke test of the benchmark: a tiny U-Net through every contender and sampler, and a parsable JSON result."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from conftest import TINY_MODEL

from diffusion.tools import throughput as bench
from diffusion.tools.throughput.measure import IMAGE_SIZE


def conv_and_linear_flops(module) -> float:
    """2 x the multiply-adds of every convolution and linear layer in one forward of one image, counted from the
    layers' shapes."""
    macs = []

    def count(layer, inputs, output):
        if isinstance(layer, torch.nn.Conv2d):
            macs.append(output.numel() * layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1])
        else:
            macs.append(output.numel() * layer.in_features)

    net = module.denoiser.net
    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net(torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE), torch.rand(1), torch.zeros(1, dtype=torch.long))
    for hook in hooks:
        hook.remove()
    return 2.0 * sum(macs)


def test_quick_bench_runs_every_contender_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--quick", "--device", "cpu", "--precision", "bf16", "--batch", "8", "--steps", "2",
            "--sample-batch", "2", "--json", str(out), *TINY_MODEL]
    result = bench.main(args)

    names = [row["name"] for row in result["training"]["rows"]]
    assert names[0] == "ours (Lightning)" and any(n.startswith("raw step (fp32") for n in names)
    rows = {row["name"]: row for row in result["training"]["rows"]}
    forward = result["flops"]["forward_per_image"]
    for row in rows.values():
        # a rate is the median of its three turns, and the achieved FLOP/s is 3 forwards per image at that rate
        assert len(row["images_per_s_reps"]) == 3 and min(row["images_per_s_reps"]) > 0
        assert row["images_per_s"] == statistics.median(row["images_per_s_reps"])
        assert row["achieved_flop_per_s"] == pytest.approx(3 * forward * row["images_per_s"], rel=1e-3)
    ratios = result["training"]["ratios"]
    ours, naive = rows["ours (Lightning)"]["images_per_s_reps"], rows[ratios["naive_used"]]["images_per_s_reps"]
    assert ratios["ours_over_naive"] == pytest.approx(statistics.median(o / n for o, n in zip(ours, naive)), rel=1e-2)
    assert {row["sampler"] for row in result["sampling"]["rows"]} == {"ddpm", *bench.FAST_SAMPLERS}
    assert all(row["images_per_s_32"] > 0 and row["images_per_s_bf16"] > 0 for row in result["sampling"]["rows"])
    # FLOPs per image: the convolutions and linear layers counted from their shapes, plus the middle attention's two
    # matmuls (3% of the tiny model: 8076800 against 7814656 counted here)
    layers = conv_and_linear_flops(bench.fresh_module(bench.compose_config("small", 8, TINY_MODEL), torch.device("cpu")))
    assert layers <= forward < 1.1 * layers
    # The convolution bound: profiled convolutions are part of the step, and the bound follows from them.
    bound = result["training"]["convolutions"]
    for profiled in bound["profiled"].values():
        assert 0 < profiled["convolution_ms"] < profiled["all_ops_ms"]
    raw_conv_ms = bound["profiled"]["raw step (bf16)"]["convolution_ms"]
    assert abs(bound["ours_over_naive_bound"] - bound["naive_ms"] / raw_conv_ms) < 1e-6 * bound["ours_over_naive_bound"]
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out.strip().splitlines()[-1])
