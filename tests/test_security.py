"""Loading a checkpoint never runs code from it, and the safetensors export samples like last.ckpt.

Two ways a checkpoint can carry code, both tried here against every command that reads one:
- a pickle payload: an object whose ``__reduce__`` calls ``os.system`` -- ``torch.load(weights_only=True)``
  refuses it (a grep-like test checks every ``torch.load`` and ``trainer.fit`` in the code asks for that);
- a tampered stored config: the checkpoint keeps the run's config for ``sample.py`` to rebuild the model, and
  Hydra's ``instantiate`` would call any ``_target_`` it names (``os.system``...), weights_only or not, .ckpt
  or .safetensors metadata alike -- ``checkpoints.module_from_checkpoint`` builds only the framework's classes.
Each payload touches its own marker file, which must not appear. ``test_the_payload_is_live`` shows that the
payload does run when loaded without those guards.

train.py on a resume reads the checkpoint with ``load_checkpoint`` before Lightning does, and Lightning's own
load is asked for weights_only=True too (Lightning 2.6 passes weights_only=None to ``torch.load``, which torch
2.6+ takes as True unless TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set). ``python -m diffusion.tools.evaluate`` reads no
model checkpoint, but with ``fid_features.features=inception`` it reads an Inception weights file, which
torch-fidelity loads with ``weights_only=False``: ``metrics.inception_weights_path`` checks it first.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_TRAIN, compose_config, describe, run_script

pytestmark = pytest.mark.slow


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def pickled_checkpoint(source: Path, target: Path, marker: Path) -> Path:
    """A complete, working checkpoint with a payload added next to its weights."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["callbacks"]["payload"] = Payload(marker)
    torch.save(checkpoint, target)
    return target


def one_error_line(proc) -> str:
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), describe(proc)
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_the_payload_is_live(tiny_run, tmp_path):
    """The control: without weights_only, loading the checkpoint runs the payload."""
    marker = tmp_path / "ran"
    path = pickled_checkpoint(tiny_run.ckpt, tmp_path / "evil.ckpt", marker)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> dict:
    """The entry points as subprocesses, two at a time: on pickled checkpoints, and on last.ckpt and its export."""
    root = tmp_path_factory.mktemp("security")
    markers = {name: root / f"ran-{name}" for name in ("sample", "train")}
    evil = pickled_checkpoint(tiny_run.ckpt, root / "evil.ckpt", markers["sample"])
    # The realistic attack on a resume: someone replaced a run's last.ckpt.
    run_dir = root / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    pickled_checkpoint(tiny_run.ckpt, run_dir / "checkpoints" / "last.ckpt", markers["train"])
    before = snapshot(run_dir)
    jobs = {
        "sample-pickle": ("sample.py", f"ckpt={evil}", "n=2", f"out={root / 'out-pickle'}"),
        "train-pickle": ("train.py", "data=sprites", f"data.dir={tiny_run.data_dir}", f"hydra.run.dir={run_dir}",
                         "ckpt_path=last", "trainer.max_steps=8", "trainer.max_epochs=4"),
        "sample-last": ("sample.py", f"ckpt={tiny_run.ckpt}", "n=8", "steps=4", f"out={root / 'from-last'}"),
        "sample-export": ("sample.py", f"ckpt={tiny_run.export}", "n=8", "steps=4", f"out={root / 'from-export'}"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_script, *args) for name, args in jobs.items()}
        procs = {name: future.result() for name, future in futures.items()}
    return {"root": root, "markers": markers, "evil": evil, "run_dir": run_dir, "before": before, "procs": procs}


def test_sample_refuses_a_pickled_payload(runs):
    line = one_error_line(runs["procs"]["sample-pickle"])
    assert line.startswith(f"error: refusing to load {runs['evil']}: it holds objects other than tensors"), line
    assert "posix.system" in line
    assert not runs["markers"]["sample"].exists(), "the payload ran"
    assert not (runs["root"] / "out-pickle").exists()


def test_train_resume_refuses_a_pickled_payload(runs):
    line = one_error_line(runs["procs"]["train-pickle"])
    assert line.startswith(f"error: refusing to load {runs['run_dir'] / 'checkpoints' / 'last.ckpt'}"), line
    assert not runs["markers"]["train"].exists(), "the payload ran"
    before, after = runs["before"], snapshot(runs["run_dir"])
    # Only Hydra's record of the command (.hydra/, rewritten on every resume) may differ.
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert all(name.startswith(".hydra/") or name == "train.log" for name in changed), sorted(changed)


def test_train_refuses_a_pickled_payload_by_path(tiny_run, tmp_path, capsys):
    """ckpt_path=FILE into a new run directory: train.py's body in-process (the payload would run in this process)."""
    from diffusion.tools.cli import reports_user_errors
    from diffusion.tools.train import train

    marker = tmp_path / "ran"
    evil = pickled_checkpoint(tiny_run.ckpt, tmp_path / "evil.ckpt", marker)
    cfg = compose_config("train", TINY_TRAIN + ["data=sprites", f"data.dir={tiny_run.data_dir}", f"ckpt_path={evil}",
                                                f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as info:
        reports_user_errors(train)(cfg)
    assert info.value.code == 2 and not marker.exists()
    assert capsys.readouterr().err.startswith(f"error: refusing to load {evil}")
    assert not list((tmp_path / "run").iterdir())


def tampered(tiny_run, tmp_path: Path, marker: Path, where: str, fmt: str) -> Path:
    """last.ckpt (or its export) with ``_target_: os.system`` put into its stored config at ``where``."""
    from diffusion.training.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(tiny_run.ckpt if fmt == "ckpt" else tiny_run.export)
    node = checkpoint["diffusion"]["config"]
    *parents, key = where.split(".")
    for name in parents:
        node = node[name]
    node[key] = {"_target_": "os.system", "_args_": [f"touch {shlex.quote(str(marker))}"]}
    if fmt == "ckpt":
        full = torch.load(tiny_run.ckpt, map_location="cpu", weights_only=True)
        full["diffusion"] = checkpoint["diffusion"]
        torch.save(full, tmp_path / "tampered.ckpt")
        return tmp_path / "tampered.ckpt"
    from diffusion.training.checkpoints import export_safetensors

    return export_safetensors(checkpoint["state_dict"], checkpoint["diffusion"], tmp_path / "tampered.safetensors")


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
@pytest.mark.parametrize("where", ["schedule", "objective", "sampler.options.eta", "optimizer"])
def test_sample_refuses_code_named_by_a_stored_config(tiny_run, tmp_path, capsys, fmt, where):
    """sample.py's body in-process: without the check, instantiate would run os.system in this process."""
    from diffusion.tools.cli import reports_user_errors
    from diffusion.tools.sample import sample_to_folder

    marker = tmp_path / "ran"
    path = tampered(tiny_run, tmp_path, marker, where, fmt)
    cfg = compose_config("sample", [f"ckpt={path}", "n=2", f"out={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as info:
        reports_user_errors(sample_to_folder)(cfg)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: refusing to build {where}._target_='os.system'"), err
    assert not marker.exists(), "the stored config ran code"
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_pickled_inception_weights(tiny_run, tmp_path, capsys):
    """evaluate's body in-process: torch-fidelity would unpickle fid_features.inception_weights without weights_only."""
    from diffusion.tools.cli import reports_user_errors
    from diffusion.tools.evaluate import evaluate

    marker = tmp_path / "ran"
    weights = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": Payload(marker)}, weights)
    cfg = compose_config("evaluate", [f"samples={tiny_run.run_dir / 'samples' / 'final.npz'}", "data=sprites",
                                      f"data.dir={tiny_run.data_dir}", "fid_features.features=inception",
                                      f"fid_features.inception_weights={weights}", f"out={tmp_path / 'eval.json'}",
                                      f"paths.root_dir={tmp_path}"])
    with pytest.raises(SystemExit) as info:
        reports_user_errors(evaluate)(cfg)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(f"error: refusing to load {weights}"), err
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "eval.json").exists()


def test_every_load_in_the_code_base_is_weights_only():
    """torch.load and Lightning's trainer.fit (which loads ckpt_path) always with weights_only=True; np.load
    never with allow_pickle=True."""
    files = sorted((ROOT / "diffusion").rglob("*.py")) + [ROOT / "train.py", ROOT / "sample.py"]
    seen = {"torch.load": 0, "fit": 0}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            name = ast.unparse(node.func)
            where = f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}"
            if name == "torch.load" or (name.endswith(".fit") and "ckpt_path" in keywords):
                seen["torch.load" if name == "torch.load" else "fit"] += 1
                value = keywords.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, f"not weights_only=True: {where}"
            if name.endswith("np.load"):
                value = keywords.get("allow_pickle")
                assert value is None or (isinstance(value, ast.Constant) and value.value is False), where
    assert seen["torch.load"] >= 1 and seen["fit"] >= 1, seen


# --------------------------------------------------------------------------------- the safetensors export


def test_sample_on_the_export_equals_sample_on_last_ckpt(tiny_run, runs):
    """checkpoints/final.safetensors holds the module's weights after fit: Lightning's EMA callback has copied
    the average into the model at the end of training. last.ckpt keeps that same average as `state_dict` (the
    raw weights are its `current_model_state`). Both come from the last step when last.ckpt was written at the
    end of training -- the default per-epoch checkpoints always are (the end of training is an epoch's end);
    with step intervals that do not divide max_steps, last.ckpt is older than the export."""
    for name in ("sample-last", "sample-export"):
        assert runs["procs"][name].returncode == 0, describe(runs["procs"][name])
    last = torch.load(tiny_run.ckpt, map_location="cpu", weights_only=True)
    assert last["global_step"] == json.loads((tiny_run.run_dir / "metrics.json").read_text())["step"]
    assert any(not torch.equal(v, last["current_model_state"][k]) for k, v in last["state_dict"].items()), \
        "EMA and raw weights agree: nothing tells which one the export holds"

    with np.load(runs["root"] / "from-last" / "samples.npz") as a, np.load(runs["root"] / "from-export" / "samples.npz") as b:
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
        assert len(np.unique(a["images"].reshape(8, -1), axis=0)) == 8
    assert (runs["root"] / "from-last" / "grid.png").read_bytes() == (runs["root"] / "from-export" / "grid.png").read_bytes()
