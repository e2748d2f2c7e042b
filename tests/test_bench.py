"""Smoke test of the benchmark: a tiny U-Net through every contender and sampler, and a parsable JSON result."""

from __future__ import annotations

import json

from conftest import TINY_MODEL

from diffusion.tools import bench


def test_quick_bench_runs_every_contender_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--quick", "--device", "cpu", "--precision", "bf16", "--batch", "8", "--steps", "2",
            "--sample-batch", "2", "--json", str(out), *TINY_MODEL]
    result = bench.main(args)

    names = [row["name"] for row in result["training"]["rows"]]
    assert names[0] == "ours (Lightning)" and any(n.startswith("raw step (fp32") for n in names)
    assert all(row["images_per_s"] > 0 and len(row["images_per_s_reps"]) == 3 for row in result["training"]["rows"])
    assert result["training"]["ratios"]["ours_over_naive"] > 0
    assert {row["sampler"] for row in result["sampling"]["rows"]} == {"ddpm", *bench.FAST_SAMPLERS}
    assert all(row["images_per_s_32"] > 0 and row["images_per_s_bf16"] > 0 for row in result["sampling"]["rows"])
    assert result["flops"]["forward_per_image"] > 0
    # The convolution bound: profiled convolutions are part of the step, and the bound follows from them.
    bound = result["training"]["convolutions"]
    for profiled in bound["profiled"].values():
        assert 0 < profiled["convolution_ms"] < profiled["all_ops_ms"]
    raw_conv_ms = bound["profiled"]["raw step (bf16)"]["convolution_ms"]
    assert abs(bound["ours_over_naive_bound"] - bound["naive_ms"] / raw_conv_ms) < 1e-6 * bound["ours_over_naive_bound"]
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out.strip().splitlines()[-1])
