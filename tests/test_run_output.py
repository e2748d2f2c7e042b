"""What one tiny run leaves behind and prints, with its stdout a pipe (as in a cluster job's log file): one step
number everywhere (a validation's figures in CSV, TensorBoard and W&B at the step of fid.json, history.jsonl
and the sample grids' file names: ``trainer.global_step`` after the step that preceded it), and progress lines
without Lightning's noise."""

from __future__ import annotations

import csv
import json
import re

import pytest
from conftest import describe, run_script, write_sprites
from test_tracking import WANDB_ENV, wandb_records


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """(process, run directory) of a 4-step run with every logger, validations, grids and FID at steps 2 and 4."""
    tmp_path = tmp_path_factory.mktemp("records")
    data, run = write_sprites(tmp_path / "sprites"), tmp_path / "run"
    env = {**WANDB_ENV, "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_API_KEY": ""}
    proc = run_script(
        "train.py", "data=sprites", f"data.dir={data}", f"hydra.run.dir={run}", "logger=[csv,tensorboard,wandb]",
        # validations, grids and FID at steps 2 and 4, inside the training epoch
        "validation.fraction=0.5", "callbacks.fid.fraction=0.5", "callbacks.sample_grid.fraction=0.5",
        "callbacks.checkpoint.save_top_k=-1", "callbacks.checkpoint.every_n_steps=1", "callbacks.progress.every_s=0", env=env,
    )
    assert proc.returncode == 0, describe(proc)
    return proc, run


@pytest.mark.slow
def test_validation_figures_sit_at_the_same_step_in_every_record(tiny_job):
    proc, run = tiny_job

    fid_rows = json.loads((run / "fid.json").read_text())["history"]
    steps = [row["step"] for row in fid_rows]
    assert steps == [2, 4]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [e["step"] for e in history if "val/fid" in e] == [e["step"] for e in history if "val/loss" in e] == steps
    assert sorted(p.name for p in (run / "samples").glob("step_*.png")) == [f"step_{s:07d}.png" for s in steps]
    # a checkpoint after a validation is named after its own step, not the validation's
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.ckpt")) == [f"step_{s:07d}.ckpt" for s in range(1, 5)]

    with (run / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for key in ("val/loss", "val/fid", "val/kid_mean"):
        assert [int(r["step"]) for r in rows if r.get(key)] == steps, key

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("val/loss", "val/fid", "val/kid_mean"):
        assert [e.step for e in events.Scalars(key)] == steps, key

    (run_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    logged, summary = {"val/loss": [], "val/fid": []}, {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            for key in logged.keys() & items.keys():
                logged[key].append(items["trainer/global_step"])
        elif kind == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
    assert logged == {"val/loss": steps, "val/fid": steps}
    assert summary["val/fid_best_step"] == min(fid_rows, key=lambda row: row["fid"])["step"]


@pytest.mark.slow
def test_a_run_logged_to_a_file_prints_progress_lines_and_no_lightning_noise(tiny_job):
    proc, run = tiny_job
    lines = proc.stdout.splitlines()
    # every_s=0: a line every 2% of the run, here every step, each with its loss, speed and times
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["1/4", "2/4", "3/4", "4/4"], proc.stdout
    assert all(re.fullmatch(r"step \d/4 \(\d+%\)  train/loss [\d.e-]+  \d+ img/s  elapsed [\dhms]+  eta [\dhms]+", line) for line in steps), steps
    assert [line.split(":")[0] for line in lines if line.startswith("validation at")] == ["validation at step 2", "validation at step 4"]
    assert "litlogger" not in proc.stdout + proc.stderr and "LeafSpec" not in proc.stderr
