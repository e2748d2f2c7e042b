"""`python -m diffusion.tools.sampler_fid`: FID against NFE on a trained checkpoint, its rows and its options."""

from __future__ import annotations

import json

import pytest

from diffusion.tools import sampler_fid
from diffusion.training.checkpoints import load_checkpoint


def test_rows_for_every_sampler_budget_and_the_extra_rows(tiny_run, tmp_path):
    out = tmp_path / "rows.json"
    rows = sampler_fid.run(sampler_fid.build_parser().parse_args([
        str(tiny_run.ckpt), "--n", "8", "--batch-size", "5", "--kid-subsets", "2", "--samplers", "euler", "heun",
        "--nfe", "3", "--options", "s_churn=2", "--collapse", "--floor", "--json", str(out),
    ]))
    assert json.loads(out.read_text())["rows"] == rows
    got = [(r["sampler"], r["steps"], r["nfe"], r.get("spacing")) for r in rows]
    assert got == [
        ("training images (floor)", 0, 0, None),
        ("euler s_churn=2", 3, 3, "karras"),  # Heun is skipped: refused below 17 steps (NFE 33), see sample_heun
        ("ddpm (z=0)", 500, 500, "schedule"),  # the collapse row: DDPM over all T levels without the added noise
    ]
    assert all(r["n"] == 8 for r in rows)
    # Training against validation images is the same distribution: FID near 0 (measured 0.011, KID 4e-6). The 4-step
    # tiny run's samples are noise, far from it (measured FID 0.39-0.44, KID ~0.009): a metric that returned 0, or
    # compared the real images with themselves, fails here.
    floor, *sampled = rows
    assert 0 <= floor["fid"] < 0.05 and abs(floor["kid"]) < 1e-3
    for r in sampled:
        assert 0.2 < r["fid"] < 2 and r["fid"] > 10 * floor["fid"] and r["kid"] > 1e-3, r


def test_options_must_be_key_number_pairs(tiny_run, capsys):
    with pytest.raises(SystemExit) as info:
        sampler_fid.main([str(tiny_run.ckpt), "--options", "s_churn"])
    assert info.value.code == 2
    assert "--options takes KEY=NUMBER pairs such as s_churn=40, got 's_churn'" in capsys.readouterr().err


def test_spacing_option_moves_the_fast_samplers_to_the_schedules_levels(tiny_run):
    rows = sampler_fid.run(sampler_fid.build_parser().parse_args([
        str(tiny_run.ckpt), "--n", "4", "--kid-subsets", "2", "--samplers", "dpmpp_2m", "--nfe", "2", "--spacing", "schedule",
    ]))
    assert [(r["sampler"], r["spacing"]) for r in rows] == [("dpmpp_2m", "schedule")]


def test_new_samplers_fit_the_budget_and_rows_record_the_label_mix(tiny_run):
    """Restart's cost depends on its options (K = 1 restart of the conf's N = 4 Heun steps: 8 evaluations), so its
    steps for a budget of 41 are (41 + 1 - 8) // 2 = 17; the one-evaluation samplers take 41 steps."""
    rows = sampler_fid.run(sampler_fid.build_parser().parse_args([
        str(tiny_run.ckpt), "--n", "4", "--kid-subsets", "2", "--samplers", "restart", "ipndm", "dpmpp_3m_sde", "--nfe", "41",
        "--options", "restart_times=1",
    ]))
    assert sampler_fid.steps_at_nfe("restart", 18, {}) is None  # K = 2, N = 4: 16 evaluations, and 2 levels at least
    assert [(r["sampler"], r["steps"], r["nfe"], r["labels"]) for r in rows] == [
        ("restart restart_times=1", 17, 41, "data"), ("ipndm", 41, 41, "data"), ("dpmpp_3m_sde", 41, 41, "data"),
    ]
    info = load_checkpoint(tiny_run.ckpt)["diffusion"]  # train.py stores the training split's class counts
    assert len(info["class_counts"]) == len(info["class_names"]) and sum(info["class_counts"]) > 0
