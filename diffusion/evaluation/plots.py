"""Pictures of a finished run: loss curves, FID over training, and the sample grids over training.

``plot_run(run_dir)`` reads what a run leaves behind (``history.jsonl``, which train.py keeps whatever the
loggers, else ``csv/metrics.csv`` of Lightning's CSVLogger; ``fid.json``; ``samples/step_*.png``) and writes ``plots/loss.png``, ``plots/fid.png`` (when FID was
measured) and ``plots/samples_over_epochs.png``. Missing inputs are skipped, so it is safe to call
at the end of any run. Matplotlib draws off-screen through the Agg canvas, without pyplot's global
state. Also runnable: ``python -m diffusion.evaluation.plots RUN_DIR``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np

from diffusion.core.errors import OneLineArgumentParser

TRAIN_LOSS = ("train/loss", "train/loss_step")
VAL_LOSS = ("val/loss", "val/loss_epoch")


def read_metrics(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Columns of a CSVLogger metrics.csv as {name: [(step, value), ...]}, blank cells dropped."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            for key, cell in row.items():
                if key in ("step", "epoch") or key is None or cell in (None, ""):
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    continue
                if math.isfinite(value) and math.isfinite(step):
                    series.setdefault(key, []).append((step, value))
    return series


def read_history(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``history.jsonl`` of ``training.experiment_tracking.RunTracker`` (one JSON object a line) as {name: [(step, value)]}."""
    series: dict[str, list[tuple[float, float]]] = {}
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line) if line.strip() else {}
        for key, value in entry.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, []).append((float(entry["step"]), float(value)))
    return series


def read_fid(path: str | Path) -> tuple[dict[str, list[tuple[float, float]]], str | None]:
    """``fid.json`` of the FID callback as ({"val/fid": [(step, fid)], "val/kid_mean": ...}, feature version)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}, None
    series: dict[str, list[tuple[float, float]]] = {}
    for entry in payload.get("history", []):
        for key in ("fid", "kid_mean"):
            if isinstance(entry.get(key), (int, float)):
                series.setdefault(f"val/{key}", []).append((float(entry["step"]), float(entry[key])))
    return series, payload.get("features")


def run_series(run_dir: Path) -> tuple[dict[str, list[tuple[float, float]]], str | None]:
    """A run's curves from the files every run writes (history.jsonl, fid.json), else from csv/metrics.csv."""
    history, csv_path = run_dir / "history.jsonl", run_dir / "csv" / "metrics.csv"
    series = read_history(history) if history.is_file() else read_metrics(csv_path) if csv_path.is_file() else {}
    fid, version = read_fid(run_dir / "fid.json")
    for key, points in fid.items():  # the FID callback's own record is complete even where history is not
        series[key] = points
    return series, version


def _first(series: dict, names: tuple[str, ...]):
    return next((series[n] for n in names if n in series), None)


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _smooth(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    alpha, out, avg = 2 / (span + 1), np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = (1 - alpha) * avg + alpha * v
        out[i] = avg / (1 - (1 - alpha) ** (i + 1))
    return out


def plot_loss(series: dict, path: Path) -> Path | None:
    train, val = _first(series, TRAIN_LOSS), _first(series, VAL_LOSS)
    if not train and not val:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    if train:
        steps, values = np.array(train).T
        noisy = len(values) > 20  # many points: a faint raw curve under a smoothed one
        ax.plot(steps, values, color="tab:blue", alpha=0.3 if noisy else 1.0, lw=0.8, label=None if noisy else "train")
        if noisy:
            ax.plot(steps, _smooth(values, max(len(values) // 50, 5)), color="tab:blue", lw=1.5, label="train (smoothed)")
    if val:
        steps, values = np.array(val).T
        ax.plot(steps, values, "o-", color="tab:orange", lw=1.5, ms=4, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    positive = [v for _, v in (train or []) + (val or [])]
    if positive and min(positive) > 0 and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("loss")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_fid(series: dict, path: Path, version: str | None = None) -> Path | None:
    fid = series.get("val/fid")
    if not fid:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    steps, values = np.array(fid).T
    ax.plot(steps, values, "o-", color="tab:green", lw=1.5, ms=4, label="FID")
    ax.set_xlabel("step")
    ax.set_ylabel("FID")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    if values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")
    kid = series.get("val/kid_mean")
    if kid:
        ax2 = ax.twinx()
        k_steps, k_values = np.array(kid).T
        ax2.plot(k_steps, k_values, "s--", color="tab:purple", lw=1.0, ms=3, label="KID")
        ax2.set_ylabel("KID")
        ax2.ticklabel_format(axis="y", useOffset=False)
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [line.get_label() for line in lines])
    ax.set_title(f"FID during training ({version})" if version else "FID during training")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _step_of(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def _first_row(grid: np.ndarray, ncols: int) -> np.ndarray:
    """The first row of a ``images.grid`` picture (1-px padding, square cells, ``ncols`` columns);
    the whole grid when its size does not fit that layout."""
    height, width = grid.shape[:2]
    cell = (width - 1) / ncols
    if cell != int(cell) or cell < 2 or height < cell + 1:
        return grid
    return grid[: int(cell) + 1]


def plot_samples(sample_dir: Path, path: Path, ncols: int = 8, max_rows: int = 16) -> Path | None:
    """Stack the first row of each grid (at most ``max_rows`` grids, evenly spread, first
    and last kept), each labelled with its training step."""
    from PIL import Image

    grids = sorted(sample_dir.glob("step_*.png"), key=_step_of)
    if not grids:
        return None
    if len(grids) > max_rows:
        picks = np.unique(np.linspace(0, len(grids) - 1, max_rows).round().astype(int))
        grids = [grids[i] for i in picks]
    strips = []
    for grid_path in grids:
        with Image.open(grid_path) as im:
            strips.append(_first_row(np.asarray(im.convert("RGB")), ncols))
    width = max(s.shape[1] for s in strips)
    row_height = 7.0 * max(s.shape[0] for s in strips) / width
    fig = _figure(8.0, 0.3 + len(strips) * (row_height + 0.15))
    axes = fig.subplots(len(strips), 1, squeeze=False)[:, 0]
    for ax, strip, grid_path in zip(axes, strips, grids):
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(f"step {_step_of(grid_path)}", rotation=0, ha="right", va="center")
    fig.suptitle("samples over training steps (first row of each grid)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.1)
    return path


def plot_run(run_dir: str | Path, ncols: int = 8) -> list[Path]:
    """Write the run's plots under ``run_dir/plots``; returns the files written."""
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    written: list[Path | None] = []
    series, version = run_series(run_dir)
    written.append(plot_loss(series, out / "loss.png"))
    written.append(plot_fid(series, out / "fid.png", version))
    written.append(plot_samples(run_dir / "samples", out / "samples_over_epochs.png", ncols=ncols))
    return [p for p in written if p is not None]


def _as_number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def plot_sweep(rows: list[dict], swept: list[str], metric: str, path: Path, sweep_dir: Path) -> Path | None:
    """One picture of a sweep: each trial's FID curve (left), then ``metric`` at the end of each trial against
    each swept parameter (a log axis for numbers spanning a decade or more, categories in order of appearance)."""
    finals = [(row, _as_number(row.get(metric))) for row in rows]
    finals = [(row, value) for row, value in finals if value is not None and value < 1e9]  # 1e9: a failed trial
    if not finals:
        return None
    fig = _figure(4.0 * (1 + len(swept)), 3.6)
    axes = fig.subplots(1, 1 + len(swept), squeeze=False)[0]
    for row, _ in finals:
        fid = run_series(sweep_dir / str(row["job"]))[0].get("val/fid")
        if fid:
            steps, values = np.array(fid).T
            axes[0].plot(steps, values, "o-", ms=3, lw=1.2, label=f"job {row['job']}")
    axes[0].set(xlabel="step", ylabel="FID", title="FID during training")
    axes[0].grid(alpha=0.3)
    if len(finals) <= 12 and axes[0].get_lines():
        axes[0].legend(fontsize=7)
    for ax, key in zip(axes[1:], swept):
        values = [row.get(key) for row, _ in finals]
        numbers = [_as_number(v) for v in values]
        if all(n is not None for n in numbers):
            ax.scatter(numbers, [v for _, v in finals], color="tab:green")
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
                ax.set_xscale("log")
        else:
            categories = list(dict.fromkeys(str(v) for v in values))
            ax.scatter([categories.index(str(v)) for v in values], [v for _, v in finals], color="tab:green")
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set(xlabel=key, ylabel=f"final {metric}")
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(
        prog="python -m diffusion.evaluation.plots",
        description="Loss, FID and samples-over-training plots of finished runs, written to RUN_DIR/plots/ (the paths printed).",
    )
    parser.add_argument("run_dirs", nargs="*", default=["."], metavar="RUN_DIR", help="a run directory (default: .)")
    for run in parser.parse_args(argv).run_dirs:
        for path in plot_run(run):
            print(path)


if __name__ == "__main__":
    main()
