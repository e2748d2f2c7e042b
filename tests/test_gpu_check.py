"""`python -m diffusion.tools.gpu_check`: its bit-for-bit comparison, FLOP count, peak table and timing, and its
resume check on two CPU processes (gloo) through the real train.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV, TINY_MODEL, write_sprites

from diffusion.core.errors import ConfigError
from diffusion.tools.gpu_check import compare, main, runs, speed


def test_differences_name_every_tensor_that_differs_by_a_single_bit():
    weights = {"net.w": torch.randn(4, 3), "net.b": torch.zeros(3), "n": torch.tensor(7)}
    checkpoint = {"state_dict": weights, "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0)}}, "lr": 1e-3}]}
    twin = {"state_dict": {k: v.clone() for k, v in weights.items()},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0)}}, "lr": 1e-3}]}
    assert compare.differences(checkpoint, twin) == []
    w = twin["state_dict"]["net.w"]
    w[1, 2] = torch.nextafter(w[1, 2], torch.tensor(float("inf")))  # one ulp: what allclose would let through
    twin["optimizer_states"][0]["state"][0]["step"] = torch.tensor(6.0)
    found = compare.differences(checkpoint, twin)
    assert [f.split(":")[0] for f in found] == ["optimizer_states[0].state.0.step", "state_dict.net.w"]
    assert "1 of 12 values differ" in found[1]
    twin["state_dict"]["net.b"] = torch.zeros(3, dtype=torch.float64)
    assert any(f.startswith("state_dict.net.b: torch.float32[3] against torch.float64[3]") for f in compare.differences(checkpoint, twin))
    assert compare.resume_differences({"global_step": 8}, {"global_step": 6}) == ["global_step: 8 against 6"]


def test_bf16_peaks_by_device_name():
    tera = 1e12
    assert speed.bf16_peak("NVIDIA H100 80GB HBM3") == 989 * tera  # SXM
    assert speed.bf16_peak("NVIDIA H100 PCIe") == 756 * tera
    assert speed.bf16_peak("NVIDIA H200") == 989 * tera
    assert speed.bf16_peak("NVIDIA A100-SXM4-80GB") == 312 * tera
    assert speed.bf16_peak("NVIDIA L40S") == 362 * tera and speed.bf16_peak("NVIDIA L4") == 121 * tera
    assert speed.bf16_peak("Tesla T4") is None


class TwoLayers(torch.nn.Module):
    """A network called as the U-Net is, net(x, c_noise, labels), whose FLOPs are known in closed form."""

    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Linear(3 * 16 * 16, 10, bias=False), torch.nn.Linear(10, 4, bias=False)

    def forward(self, x, c_noise, labels=None):
        return self.second(self.first(x.flatten(1)))


def test_flops_per_image_count_the_forward_and_the_backward():
    # Forward: 2 * (768 * 10 + 10 * 4) per image. Backward: both weight gradients (as much again) and the input
    # gradient of the second layer; none for the first layer's input, the images.
    expected = 2 * 768 * 10 * 2 + 2 * 10 * 4 * 3
    for batch in (4, 8):
        assert speed.train_flops_per_image(TwoLayers(), batch, 5, 16, torch.device("cpu")) == expected


def test_images_per_second_leave_out_the_first_quarter_of_the_steps():
    # A slow early step (warm-up: autotuning, compilation), then one step every half second.
    ends = [(1, 10.0), (2, 13.0), (3, 13.5), (4, 14.0), (5, 14.5)]
    assert speed.images_per_second(ends, images_per_step=64) == pytest.approx(3 * 64 / 1.5)
    assert speed.images_per_second(ends[:1], images_per_step=64) is None  # no interval to time


def test_the_kill_lands_mid_run_and_mid_epoch():
    assert runs.mid_epoch_step(40, 14) == 20
    assert runs.mid_epoch_step(40, 10) == 21  # step 20 ends an epoch: one step later
    with pytest.raises(ConfigError, match="--steps=2"):
        runs.mid_epoch_step(2, 10)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--processes", "0"], "--processes=0 must be at least 1"),
        (["--steps", "10", "--checkpoint-every", "10"], "--checkpoint-every=10 must lie inside the run"),
        (["--batch-size", "0"], "--batch-size=0 must be at least 1"),
        (["--timeout", "-5"], "--timeout=-5.0 must be a number of seconds > 0"),
    ],
)
def test_bad_arguments_end_as_one_error_line_before_any_run(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_ddp_run_killed_after_a_mid_epoch_checkpoint_resumes_to_the_same_bits(tmp_path):
    """The tool's resume check on two CPU processes: 128 training images, 64 a process, 4 batches of 16 an epoch;
    the run is killed (SIGKILL) after its checkpoint at step 3, mid-epoch, resumed with ckpt_path=auto, and must end
    at step 6 (past an epoch boundary) with the uninterrupted run's EMA and raw weights and optimizer state."""
    data = write_sprites(tmp_path / "sprites", n=160)
    args = ["--steps", "6", "--checkpoint-every", "3", "--batch-size", "16", "--processes", "2", "--checks", "resume",
            "--precision", "32-true", "--out", str(tmp_path / "out"), "--timeout", "240",
            *TINY_MODEL, "data=sprites", f"data.dir={data}", "data.val_fraction=0.2", "sampler.steps=4"]
    # CPU processes over gloo, GPUs or not: what CI has
    env = {**os.environ, **SUBPROCESS_ENV, "DIFFUSION_ROOT": str(ROOT / ".cache" / "test-root"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "diffusion.tools.gpu_check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert out.startswith("gpu_check: no GPU: 2 CPU processes (DDP over gloo), 32-true"), out[-3000:]
    assert "PASS resume" in out and proc.returncode == 0, out[-4000:]
    # The tool's verdict, checked here without its code: the two final checkpoints, tensor by tensor.
    whole, resumed = (torch.load(tmp_path / "out" / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
                      for run in ("whole", "resumed"))
    assert whole["global_step"] == resumed["global_step"] == 6
    for key in ("state_dict", "current_model_state"):  # the EMA weights, the raw weights
        assert whole[key].keys() == resumed[key].keys()
        assert all(torch.equal(whole[key][name], resumed[key][name]) for name in whole[key]), key
    moments = [(whole["optimizer_states"][0]["state"][i], resumed["optimizer_states"][0]["state"][i]) for i in whole["optimizer_states"][0]["state"]]
    assert all(torch.equal(a[k], b[k]) for a, b in moments for k in a)


def test_the_distil_check_reads_the_curve_and_judges_it_against_the_targets(tmp_path):
    """FID at 1 and 2 steps by step from the distillation's own records; the verdict is on the last step, against
    issue 19's ratios to the teacher's DDPM-500 (1 step within 60%, 2 steps within 30%)."""
    import json

    from diffusion.tools.gpu_check import distil

    def write(name, figures):
        rows = [{"step": step, "fid": fid} for step, fid in figures.items()]
        (tmp_path / name).write_text(json.dumps({"history": rows}))

    write("fid.json", {108: 20.0, 216: 3.1, 324: 1.5})
    write("fid_2step.json", {108: 9.0, 216: 1.2, 324: 1.25})
    curve = distil.Curve.read(tmp_path)
    assert curve.steps == [108, 216, 324] and curve.one == [20.0, 3.1, 1.5] and curve.two == [9.0, 1.2, 1.25]
    assert curve.four is None and "4 steps" not in curve.table()[0]
    write("fid_4step.json", {216: 1.1, 324: 1.0})
    curve = distil.Curve.read(tmp_path)
    assert curve.four == [None, 1.1, 1.0] and curve.table()[-1].endswith("4 steps    1.000")
    passed, line = curve.verdict(1.0)
    assert passed and "1.50x" in line and "1.25x" in line
    assert not curve.verdict(0.95)[0]  # 2 steps 1.32x the teacher: over 1.3x
    write("fid.json", {108: 20.0, 216: 3.1, 324: 1.7})
    assert not distil.Curve.read(tmp_path).verdict(1.0)[0]  # 2 steps 1.25x passes, 1 step 1.7x does not
    assert distil.Curve.read(tmp_path).verdict(1.0, judged=(2,))[0]  # a 2-step generator (dmd) is judged at 2 only
    assert not distil.Curve.read(tmp_path).verdict(1.0, judged=(1,))[0]
    (tmp_path / "fid_2step.json").unlink()
    with pytest.raises(runs.Failed, match="fid_2step.json cannot be read"):
        distil.Curve.read(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--checks", "distil", "--distil-steps", "7"], "--distil-steps=7 must be at least 8"),
    (["--checks", "distil", "--teacher-steps", "0"], "--teacher-steps=0 must be at least 1"),
    (["--checks", "distil", "--teacher", "/nonexistent.ckpt"], "is not a file"),
    (["--checks", "distil", "--teacher", "/nonexistent.ckpt", "--teacher-steps", "5"], "drop it with --teacher"),
])
def test_the_distil_checks_settings_are_refused_in_one_line(args, message, capsys):
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_distil_check_takes_only_a_flow_teacher(tiny_run, capsys):
    """The student keeps its teacher's preconditioning and the check distils with objective=flow: a teacher of
    another objective is refused before any run starts."""
    with pytest.raises(SystemExit):
        main(["--checks", "distil", "--teacher", str(tiny_run.ckpt)])
    err = capsys.readouterr().err
    assert "objective=flow" in err and "EpsPrediction" in err and err.count("\n") == 1
