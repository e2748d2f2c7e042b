"""Hydra callbacks: a guard that runs before Hydra writes into a run directory, a multirun summary (table,
ready-to-run command of the best trial, picture), and the end of each job's W&B run."""

from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from diffusion.core.errors import ConfigError

# Config groups whose options make a search rather than a run (conf/hparams_search/: hydra.mode MULTIRUN and a
# sweeper): a job's rerun command leaves them out, or "rerun this job" would launch a new search.
SEARCH_GROUPS = ("hparams_search",)


def rerun_command(overrides: list[str]) -> str:
    """``python train.py`` with a job's own overrides (a search trial's drawn values among them, as plain
    KEY=VALUE): one training run in a fresh run directory of its own, not a multirun and not a new trial."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in SEARCH_GROUPS]
    return shlex.join(["python", "train.py", *kept])


def collect_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory that holds a metrics.json: its overrides, then its metrics."""
    rows = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job_dir = metrics_file.parent
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
        row: dict[str, Any] = {"job": job_dir.name}
        row.update(dict(o.split("=", 1) for o in overrides if "=" in o))
        row.update(json.loads(metrics_file.read_text()))
        row["command"] = rerun_command(list(overrides))
        rows.append(row)
    return rows


def swept_keys(rows: list[dict[str, Any]], sweep_dir: Path) -> list[str]:
    """The overrides whose values differ between the jobs: what the sweep varied."""
    keys: list[str] = []
    for job in {str(row["job"]) for row in rows}:
        overrides_file = sweep_dir / job / ".hydra" / "overrides.yaml"
        if overrides_file.exists():
            keys += [o.split("=", 1)[0] for o in OmegaConf.load(overrides_file) if "=" in o]
    keys = list(dict.fromkeys(sorted(keys)))
    return [k for k in keys if len({str(row.get(k)) for row in rows}) > 1]


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The finished job with the lowest ``metric`` (train.py's figures are all lower-is-better)."""
    scored = [row for row in rows if isinstance(row.get(metric), (int, float)) and "failed" not in row]
    return min(scored, key=lambda row: row[metric]) if scored else None


def write_summary(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    table = [columns] + [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in table)


class SweepSummary(Callback):
    """At the end of a multirun, write <sweep dir>/summary.csv (one row a job, with the command that reruns it),
    print the table and the best job's command, and draw <sweep dir>/sweep.png: each job's FID curve and the
    final ``optimized_metric`` against each swept parameter."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # An Optuna study in sqlite:///<sweep dir>/optuna.db is opened before Hydra creates the sweep directory.
        if str(config.hydra.sweeper.get("storage") or "").startswith("sqlite:///"):
            Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_runs(sweep_dir)
        if not rows:
            print(f"sweep summary: no finished runs under {sweep_dir}")
            return
        write_summary(rows, sweep_dir / "summary.csv")
        table = format_table([{k: v for k, v in row.items() if k != "command"} for row in rows])
        print(f"sweep summary ({len(rows)} runs), also in {sweep_dir / 'summary.csv'}:\n{table}")
        metric = str(config.get("optimized_metric", "val/fid"))
        best = best_row(rows, metric)
        if best is not None:
            (sweep_dir / "best_command.txt").write_text(best["command"] + "\n")
            print(f"best job {best['job']} ({metric} {best[metric]:.4g}):\n  {best['command']}")
        try:
            from diffusion.evaluation.plots import plot_sweep

            picture = plot_sweep(rows, swept_keys(rows, sweep_dir), metric, sweep_dir / "sweep.png", sweep_dir)
        except Exception as err:  # noqa: BLE001 - a picture must never fail a finished sweep
            print(f"warning: sweep picture not written: {err}", file=sys.stderr)
        else:
            if picture is not None:
                print(f"sweep picture: {picture}")


class FinishWandbRun(Callback):
    """Close the job's W&B run when the job ends, marked failed (exit code 1) when the job raised: without it
    every job of a sweep would log into the first job's run."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from diffusion.training.experiment_tracking import finish_wandb

        finish_wandb(0 if job_return.status == JobStatus.COMPLETED else 1)


class RunDirectoryGuard(Callback):
    """Refuse, before Hydra rewrites ``.hydra/`` in it, to start a fresh run in a directory that already
    holds checkpoints: only a run that resumes (``ckpt_path=last|PATH``, or ``auto`` finding a checkpoint
    there) may reuse a run directory. (A multirun job, such as one a cluster requeues into its sweep
    subdirectory, meets the same check in ``train.py``.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(Path(config.hydra.run.dir), config)

    @staticmethod
    def check(run_dir: Path, config: DictConfig) -> None:
        from diffusion.training.checkpoints import check_run_dir, resolve_ckpt_path

        try:
            check_run_dir(run_dir, resuming=resolve_ckpt_path(config.get("ckpt_path"), run_dir) is not None)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
