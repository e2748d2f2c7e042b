"""What the dashboards receive: the run's config in every logger, one W&B run per job, TensorBoard's HParams
table, plots from any logger, the sweep summary, and the identity a resumed run keeps.

W&B runs offline into temporary folders; its ``.wandb`` files are read back with W&B's own protobuf records."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, compose_config, describe, run_script, write_sprites
from omegaconf import OmegaConf

WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    for key, value in {**WANDB_ENV, "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def wandb_records(run_file: Path) -> list:
    """The protobuf records of an offline ``run-ID.wandb`` file: a 7-byte header (":W&B", magic, version),
    then LevelDB-log blocks of 32 KiB whose chunks (crc32, length, type) make up the records."""
    from wandb.proto import wandb_internal_pb2

    data, records, block, pos, chunk = run_file.read_bytes(), [], 32768, 7, b""
    assert data[:4] == b":W&B", run_file
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return records


def wandb_run(run_dir: Path) -> dict:
    """run id, group, name, tags, job type, config, summary (last values) and exit code of one offline run.
    In this process, W&B's service may still be writing the file after ``finish``: tear it down first."""
    import sys

    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    (run_file,) = run_dir.glob("run-*.wandb")
    info: dict = {"config": {}, "summary": {}, "fid_history": [], "exit_code": None}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            info.update(id=run.run_id, group=run.run_group, name=run.display_name, tags=list(run.tags), job_type=run.job_type)
            info["config"].update({u.key: json.loads(u.value_json) for u in run.config.update})
        elif kind == "config":
            info["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "summary":
            for u in record.summary.update:
                info["summary"]["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
        elif kind == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            if "val/fid" in items:
                info["fid_history"].append((items["trainer/global_step"], items["val/fid"]))
        elif kind == "exit":
            info["exit_code"] = record.exit.exit_code
    return info


def tensorboard_session(log_dir: Path) -> tuple[dict, list[str]]:
    """The hyperparameters of TensorBoard's HParams session and the metric tags of its experiment."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(log_dir))
    events.Reload()
    hparams, metrics = {}, []
    for raw in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                hparams[key] = getattr(value, value.WhichOneof("kind"))
        if data.HasField("experiment"):
            metrics = [m.name.tag for m in data.experiment.metric_infos]
    return hparams, metrics


# -- without training ---------------------------------------------------------------------------------------


def test_flat_config_has_dotted_keys_and_class_names():
    from diffusion.training.experiment_tracking import flat_config

    cfg = compose_config("train", ["optimizer.lr=0.0042", "schedule=cosine", "tags=[a,b]"])
    flat = flat_config(cfg)
    assert flat["optimizer.lr"] == 0.0042
    assert flat["schedule._target_"] == "CosineSchedule"
    assert flat["seed"] == 0 and flat["tags"] == "['a', 'b']"
    assert not any(key.startswith("hydra") for key in flat)
    assert all(not isinstance(v, (dict, list)) for v in flat.values())


def test_wandb_run_id_is_kept_for_a_resumed_run(tmp_path, offline_wandb):
    from diffusion.training.experiment_tracking import WANDB_RUN_FILE, prepare_wandb

    ids = []
    for _ in range(2):  # the second call is what `ckpt_path=last` does in the same run directory
        cfg = compose_config("train", ["logger=[csv,wandb]", "tags=[baseline]"])
        prepare_wandb(cfg, tmp_path)
        ids.append(cfg.logger.wandb.id)
        assert cfg.logger.wandb.resume == "allow" and list(cfg.logger.wandb.tags) == ["baseline"]
    assert ids[0] == ids[1] == json.loads((tmp_path / WANDB_RUN_FILE).read_text())["id"]
    assert len(ids[0]) == 8


def test_plots_need_no_csv_logger(tmp_path, capsys):
    from diffusion.evaluation.plots import main, plot_run

    lines = [{"step": s, "train/loss": 1.0 / s} for s in range(1, 9)] + [{"step": 8, "val/loss": 0.2}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    history = [{"step": 4, "fid": 9.0, "kid_mean": 0.1}, {"step": 8, "fid": 5.0, "kid_mean": 0.05}]
    (tmp_path / "fid.json").write_text(json.dumps({"features": "sprite-x", "history": history}))
    assert {p.name for p in plot_run(tmp_path)} == {"loss.png", "fid.png"}
    with pytest.raises(SystemExit) as done:  # the command answers --help instead of plotting a run called --help
        main(["--help"])
    assert done.value.code == 0 and "RUN_DIR" in capsys.readouterr().out


def test_finishing_a_failed_job_closes_its_wandb_run_with_exit_code_1(tmp_path, offline_wandb):
    import wandb
    from hydra.core.utils import JobReturn, JobStatus

    from diffusion.tools.hydra_callbacks import FinishWandbRun

    run = wandb.init(project="test", dir=str(tmp_path), mode="offline")
    FinishWandbRun().on_job_end(OmegaConf.create({}), JobReturn(status=JobStatus.FAILED))
    assert wandb.run is None
    assert wandb_run(Path(run.dir).parent)["exit_code"] == 1


def fake_job(sweep: Path, job: int, lr: float, fids: list[float]) -> None:
    job_dir = sweep / str(job)
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create([f"optimizer.lr={lr}", "data=sprites"]), job_dir / ".hydra" / "overrides.yaml")
    history = [{"step": 10 * (i + 1), "fid": fid} for i, fid in enumerate(fids)]
    (job_dir / "fid.json").write_text(json.dumps({"features": "f", "history": history}))
    (job_dir / "metrics.json").write_text(json.dumps({"val/fid": fids[-1], "step": 10 * len(fids)}))


def test_sweep_summary_names_the_best_command_and_draws_the_sweep(tmp_path, capsys):
    from diffusion.tools.hydra_callbacks import SweepSummary

    for job, (lr, fids) in enumerate([(0.001, [9.0, 7.0]), (0.002, [8.0, 4.0]), (0.004, [8.5, 6.0])]):
        fake_job(tmp_path, job, lr, fids)
    config = OmegaConf.create({"optimized_metric": "val/fid", "hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {}}})
    SweepSummary().on_multirun_end(config)
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer.lr"] for r in rows] == ["0.001", "0.002", "0.004"]
    assert rows[1]["command"] == "python train.py optimizer.lr=0.002 data=sprites"
    assert (tmp_path / "best_command.txt").read_text().strip() == rows[1]["command"]
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert "best job 1" in capsys.readouterr().out


def test_evaluate_logs_a_linked_wandb_run(tmp_path, offline_wandb):
    from diffusion.tools.output_records import log_evaluation

    train_dir = tmp_path / "run"
    (train_dir / "samples").mkdir(parents=True)
    record = {"id": "abcd1234", "project": "p", "name": "optimizer.lr=0.001", "group": "sweep-7", "dir": str(train_dir)}
    (train_dir / "wandb_run.json").write_text(json.dumps(record))
    samples = train_dir / "samples" / "final.npz"
    samples.write_bytes(b"")
    cfg = OmegaConf.create({"wandb": "auto", "out": str(tmp_path / "eval" / "eval.json"), "samples": str(samples)})
    where = log_evaluation(cfg, {"fid": 3.5, "features": "f"}, samples, [])
    info = wandb_run(Path(where).parent)
    assert (info["job_type"], info["group"], info["config"]["train_run_id"]) == ("evaluate", "sweep-7", "abcd1234")
    assert info["summary"]["eval/fid"] == 3.5
    cfg.wandb = "false"
    assert log_evaluation(cfg, {"fid": 3.5}, samples, []) is None


# -- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_with_every_logger_then_resume(tmp_path):
    data, out = write_sprites(tmp_path / "sprites"), tmp_path / "sweep"
    env = {**WANDB_ENV, "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_API_KEY": ""}
    common = ["data=sprites", f"data.dir={data}", "logger=[csv,tensorboard,wandb]", "tags=[smoke]"]
    proc = run_script("train.py", "-m", *TINY_TRAIN, *common, f"hydra.sweep.dir={out}", "optimizer.lr=0.001,0.002", tiny=False, env=env, timeout=600)
    assert proc.returncode == 0, describe(proc)

    runs = [wandb_run(next((out / job / "wandb").glob("offline-run-*"))) for job in ("0", "1")]
    assert runs[0]["id"] != runs[1]["id"]
    assert [r["config"]["optimizer.lr"] for r in runs] == [0.001, 0.002]
    assert [r["name"] for r in runs] == ["optimizer.lr=0.001", "optimizer.lr=0.002"]
    assert runs[0]["group"] == runs[1]["group"] == str(out)
    for run, job in zip(runs, ("0", "1")):
        assert run["tags"] == ["smoke"] and run["job_type"] == "train" and run["exit_code"] == 0
        assert run["config"]["run.parameters"] > 0 and len(run["config"]["run.data_fingerprint"]) == 16
        assert run["summary"]["val/fid"] == {"min": pytest.approx(json.loads((out / job / "metrics.json").read_text())["val/fid"])}
        best_step = min(run["fid_history"], key=lambda point: point[1])[0]  # the chart's x of the lowest FID
        assert run["summary"]["val/fid_best_step"] == best_step

    for job, lr in (("0", 0.001), ("1", 0.002)):
        hparams, metrics = tensorboard_session(out / job / "tensorboard")
        assert hparams["optimizer.lr"] == pytest.approx(lr) and hparams["schedule._target_"] == "LinearSchedule"
        assert set(metrics) == {"val/fid", "val/fid_best", "val/loss"}
    with (out / "summary.csv").open() as f:
        assert [r["optimizer.lr"] for r in csv.DictReader(f)] == ["0.001", "0.002"]
    assert (out / "sweep.png").is_file() and (out / "0" / "plots" / "loss.png").is_file()

    # Resume job 0 for four more steps (max_epochs=3: Lightning spends an empty epoch on an end-of-epoch checkpoint).
    resumed = run_script(
        "train.py", *common, f"hydra.run.dir={out / '0'}", "optimizer.lr=0.001", "ckpt_path=last",
        "trainer.max_steps=8", "trainer.max_epochs=3", env=env,
    )
    assert resumed.returncode == 0, describe(resumed)
    second = sorted((out / "0" / "wandb").glob("offline-run-*"))
    continued = wandb_run(second[-1])
    assert len(second) == 2 and continued["id"] == runs[0]["id"]
    assert min(step for step, _ in continued["fid_history"]) > max(step for step, _ in runs[0]["fid_history"])
    steps = [json.loads(line)["step"] for line in (out / "0" / "history.jsonl").read_text().splitlines() if "train/loss" in line]
    assert steps == list(range(1, 9))
    val_steps = [json.loads(line)["step"] for line in (out / "0" / "history.jsonl").read_text().splitlines() if "val/" in line]
    assert val_steps == sorted(set(val_steps))


def test_final_grid_and_opt_in_export_artifact_reach_wandb(tmp_path, offline_wandb):
    from types import SimpleNamespace

    import numpy as np
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from diffusion.data import images
    from diffusion.training.experiment_tracking import finish_run, finish_wandb

    images.save_png(np.zeros((18, 18, 3), dtype=np.uint8), tmp_path / "samples" / "final.png")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "final.safetensors").write_bytes(b"weights")
    kinds = []
    for artifact in (False, True):
        logger = WandbLogger(project="test", save_dir=str(tmp_path / str(artifact)), mode="offline")
        trainer = SimpleNamespace(callbacks=[], loggers=[logger], global_step=3)
        finish_run(trainer, {"val/fid": 2.0}, tmp_path, artifact=artifact)
        finish_wandb()
        wandb.teardown()  # the service writes the file until torn down
        (run_file,) = (tmp_path / str(artifact)).glob("wandb/offline-run-*/run-*.wandb")
        records = wandb_records(run_file)
        kinds.append([r.artifact.type for r in records if r.WhichOneof("record_type") == "artifact"])
        logged = {"/".join(i.nested_key) or i.key for r in records if r.WhichOneof("record_type") == "history" for i in r.history.item}
        assert any(key.startswith("samples/final") for key in logged)
    assert kinds == [[], ["model"]]


def test_resumed_tensorboard_curve_has_each_step_once(tmp_path):
    """An interrupted process logged steps 0-5 but its checkpoint holds step 3: the resumed run's steps 3-4 replace
    the old ones (TensorBoard's purge_step), as TensorBoard reads the run."""
    from types import SimpleNamespace

    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from diffusion.training.experiment_tracking import RunTracker

    first = TensorBoardLogger(str(tmp_path), name="tensorboard", version="")
    for step in range(6):
        first.log_metrics({"train/loss": 1.0}, step)
    first.finalize("failed")

    resumed = TensorBoardLogger(str(tmp_path), name="tensorboard", version="")
    tracker = RunTracker({"seed": 0}, tmp_path)
    tracker.on_load_checkpoint(None, None, {"global_step": 3})
    tracker.on_fit_start(SimpleNamespace(is_global_zero=True, loggers=[resumed]), None)
    for step in (3, 4):
        resumed.log_metrics({"train/loss": 2.0}, step)
    resumed.finalize("success")

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(0, 1.0), (1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]


def test_a_continued_optuna_search_draws_new_startup_trials(tmp_path):
    import optuna

    from diffusion.tools.cli import optuna_seed

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert optuna_seed(1234, storage, "s") == 1234  # no study yet
    study = optuna.create_study(study_name="s", storage=storage)
    for value in (1.0, 2.0):
        study.tell(study.ask(), value)
    assert optuna_seed(1234, storage, "s") == 1236
    assert optuna_seed(1234, None, "s") == 1234
