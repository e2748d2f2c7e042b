"""Hydra callbacks: a guard that runs before Hydra writes into a run directory, and a multirun summary."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from diffusion.core.errors import ConfigError


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
        rows.append(row)
    return rows


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
    """At the end of a multirun, write <sweep dir>/summary.csv and print the same table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_runs(sweep_dir)
        if not rows:
            print(f"sweep summary: no finished runs under {sweep_dir}")
            return
        write_summary(rows, sweep_dir / "summary.csv")
        print(f"sweep summary ({len(rows)} runs), also in {sweep_dir / 'summary.csv'}:\n{format_table(rows)}")


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
