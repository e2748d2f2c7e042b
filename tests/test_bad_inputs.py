"""Every bad input the framework accepts, in one table: data files, settings, checkpoints.

Each case must end with exactly one line on stderr, starting with ``error:`` and naming the problem, exit
status 2, and leave every file that existed before byte for byte as it was: the shared tiny run, the run
directory a case resumes (a copy of it), the samples folder a sample.py case writes into (with
``overwrite=true``, so only the error can stop it).

Cases marked ``sub`` go through the real entry point (``python train.py`` / ``python sample.py`` as a
subprocess, run two at a time before the table); at least one of each kind (data, settings, checkpoint) does,
and the Hydra composition errors (``sampler=nope``) can only be seen there. The others call what the entry
point calls after Hydra -- ``reports_user_errors(train | sample_to_folder | evaluate)(cfg)`` -- in-process.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGES_FILE, LABELS_FILE, TINY_TRAIN, compose_config, describe, make_sprites, run_script
from PIL import Image

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    id: str
    script: str  # train | sample | evaluate
    args: tuple[str, ...]  # overrides; {case}, {data}, {ckpt}, {export}, {run_copy}, {samples} are filled in
    words: tuple[str, ...]  # what the error line must say
    setup: Callable[[Path], None] | None = None  # writes the bad files into the case's folder
    sub: bool = False  # through the entry point as a subprocess
    strict: bool = False  # not even Hydra's .hydra/ record of an existing run directory may change


# --------------------------------------------------------------------------------- bad files


def _sprites(case: Path, images=None, labels=None) -> None:
    """The course's two .npy files in {case}/data, with either array replaced."""
    good_images, good_labels = make_sprites(160)
    (case / "data").mkdir(parents=True)
    for name, array in ((IMAGES_FILE, good_images if images is None else images),
                        (LABELS_FILE, good_labels if labels is None else labels)):
        np.save(case / "data" / name, array)


def _with_nan(kind: str) -> np.ndarray:
    images = make_sprites(160)[0].astype(np.float32)
    images[7, 3, 2, 1] = np.nan if kind == "nan" else np.inf
    return images


def _nan_labels() -> np.ndarray:
    labels = make_sprites(160)[1]
    labels[5, 2] = np.nan
    return labels


def _truncated_npy(case: Path) -> None:
    _sprites(case)
    path = case / "data" / IMAGES_FILE
    path.write_bytes(path.read_bytes()[:1000])


def _npz_not_npy(case: Path) -> None:
    _sprites(case)
    with open(case / "data" / IMAGES_FILE, "wb") as f:
        np.savez(f, images=make_sprites(160)[0])


def _png(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _folder(case: Path, files: dict[str, object]) -> None:
    """{case}/images with PNGs of the given sizes (a tuple) or raw bytes."""
    (case / "images").mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, tuple):
            _png(case / "images" / name, content)
        else:
            (case / "images" / name).write_bytes(content)


def _truncated(source: str, name: str) -> Callable[[Path], None]:
    def setup(case: Path) -> None:
        case.mkdir(parents=True, exist_ok=True)
        data = Path(source.format(**_CONTEXT)).read_bytes()
        (case / name).write_bytes(data[: len(data) // 3])

    return setup


def _write(name: str, content: Callable[[], bytes]) -> Callable[[Path], None]:
    def setup(case: Path) -> None:
        case.mkdir(parents=True, exist_ok=True)
        (case / name).write_bytes(content())

    return setup


def _not_ours(case: Path) -> None:
    case.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": torch.zeros(3)}, case / "plain.ckpt")


def _safetensors_without_config(case: Path) -> None:
    from safetensors.torch import save_file

    case.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(3)}, str(case / "bare.safetensors"))


def _npz(case: Path) -> None:
    case.mkdir(parents=True, exist_ok=True)
    np.savez(case / "other.npz", x=np.zeros(3))


_RANDOM = lambda: np.random.default_rng(0).bytes(4096)  # noqa: E731

# Filled in by the `context` fixture: the shared run's paths, for templates and setups.
_CONTEXT: dict[str, str] = {}

D = ("data=sprites", "data.dir={case}/data")  # a case's own sprite files
F = ("data=folder", "data.dir={case}/images", "data.val_fraction=0")  # a case's own image folder

CASES = [
    # -- data files (train.py) ------------------------------------------------------------------------------
    Case("data-missing-files", "train", ("data=sprites", "data.dir={case}/empty"),
         (IMAGES_FILE, "{case}/empty", "DeepLearning.AI", "data=procedural"), lambda c: (c / "empty").mkdir(parents=True),
         sub=True),
    Case("data-truncated-npy", "train", D, ("cannot read images file", IMAGES_FILE), _truncated_npy),
    Case("data-npz-not-npy", "train", D, (IMAGES_FILE, ".npz archive"), _npz_not_npy),
    Case("data-wrong-dtype-str", "train", D, (IMAGES_FILE, "dtype <U1"),
         lambda c: _sprites(c, images=np.full((160, 16, 16, 3), "a"))),
    Case("data-wrong-dtype-complex", "train", D, (IMAGES_FILE, "dtype complex64"),
         lambda c: _sprites(c, images=make_sprites(160)[0].astype(np.complex64))),
    Case("data-wrong-shape", "train", D, (IMAGES_FILE, "shape (N, H, W, 3)", "(160, 3, 16, 16)"),
         lambda c: _sprites(c, images=make_sprites(160)[0].transpose(0, 3, 1, 2))),
    Case("data-mismatched-counts", "train", D, (LABELS_FILE, "159 labels for 160 images"),
         lambda c: _sprites(c, labels=make_sprites(160)[1][:159])),
    Case("data-nan-images", "train", D, (IMAGES_FILE, "NaN"), lambda c: _sprites(c, images=_with_nan("nan"))),
    Case("data-inf-images", "train", D, (IMAGES_FILE, "infinite"), lambda c: _sprites(c, images=_with_nan("inf"))),
    Case("data-nan-labels", "train", D, (LABELS_FILE, "NaN"), lambda c: _sprites(c, labels=_nan_labels())),
    Case("data-batch-larger-than-data", "train", ("data=sprites", "data.dir={data}", "data.batch_size=1000"),
         ("data.batch_size=1000", "exceeds")),
    Case("folder-missing", "train", ("data=folder", "data.dir={case}/absent"), ("{case}/absent", "does not exist")),
    Case("folder-empty", "train", F, ("{case}/images", "holds no images"), lambda c: (c / "images").mkdir(parents=True)),
    Case("folder-corrupt-png", "train", F, ("cannot read image", "bad.png"),
         lambda c: _folder(c, {"good.png": (16, 16), "bad.png": b"\x89PNG\r\n\x1a\n" + bytes(100)})),
    Case("folder-sheet-not-a-multiple", "train", (*F, "data.cell_size=16"),
         ("sheet.png", "40x40", "not a multiple of data.cell_size=16"), lambda c: _folder(c, {"sheet.png": (40, 40)})),
    Case("folder-not-square", "train", F, ("wide.png", "32x16", "data.cell_size"), lambda c: _folder(c, {"wide.png": (32, 16)})),
    # -- settings (train.py) --------------------------------------------------------------------------------
    Case("config-unknown-sampler", "train", ("sampler=nope",), ("sampler=nope", "ddim", "dpmpp_2m", "heun"), sub=True),
    Case("config-unknown-schedule", "train", ("schedule=nope",), ("schedule=nope", "cosine", "linear"), sub=True),
    Case("config-unknown-key", "train", ("schedule.nope=3",), ("schedule.nope",), sub=True),
    Case("config-malformed-override", "train", ("sampler=[",), ("sampler=[", "KEY=VALUE"), sub=True),
    Case("config-lr-zero", "train", ("optimizer.lr=0",), ("optimizer.lr=0", "positive")),
    Case("config-lr-negative", "train", ("optimizer.lr=-1",), ("optimizer.lr=-1", "positive")),
    Case("config-batch-size-zero", "train", ("data.batch_size=0",), ("data.batch_size=0", "positive integer")),
    Case("config-T-zero", "train", ("schedule.T=0",), ("schedule.T=0",), sub=True),
    Case("config-T-negative", "train", ("schedule.T=-5",), ("schedule.T=-5",)),
    Case("config-beta-decreasing", "train", ("schedule.beta_start=0.02", "schedule.beta_end=0.0001"), ("beta_start < beta_end",)),
    Case("config-sampler-steps-zero", "train", ("sampler.steps=0",), ("steps=0",)),
    Case("config-lr-schedule-unknown", "train", ("training.lr_schedule=nope",), ("lr_schedule", "'nope'", "cosine")),
    Case("config-label-dropout", "train", ("training.label_dropout=2",), ("label_dropout=2",)),
    Case("config-compile-not-bool", "train", ("training.compile=maybe",), ("training.compile='maybe'", "true or false")),
    Case("config-ema-width", "train", ("callbacks.ema.sigma_rel=1.5",), ("callbacks.ema.sigma_rel=1.5", "0.3")),
    Case("config-train-searched-levels", "train", ("sampler.spacing=optimized",), ("sampler.spacing=optimized", "search_steps")),
    Case("config-distillation-without-teacher", "train", ("experiment=cd",), ("distillation needs its teacher", "init_from=")),
    Case("config-run-dir-taken", "train", ("hydra.run.dir={run_copy}",), ("{run_copy}", "already holds checkpoints", "ckpt_path=last"),
         sub=True, strict=True),
    # -- settings (sample.py) -------------------------------------------------------------------------------
    Case("sample-n-zero", "sample", ("n=0",), ("n=0",)),
    Case("sample-precision-unknown", "sample", ("precision=16",), ("precision=16", "auto, 32, bf16")),
    Case("sample-n-negative", "sample", ("n=-4",), ("n=-4",)),
    Case("sample-guidance-negative", "sample", ("guidance=-1",), ("guidance=-1",)),
    Case("sample-steps-zero", "sample", ("steps=0",), ("steps=0",)),
    Case("sample-heun-unsound-steps", "sample", ("sampler=heun", "steps=3"), ("heun", "steps=3", "lowest sound NFE 33", "sampler.steps>=17")),
    Case("sample-steps-above-T", "sample", ("sampler=ddpm", "steps=501"), ("steps=501", "T=500")),
    Case("sample-label-unknown", "sample", ("n=2", "label=dragon"), ("label=dragon", "hero", "side-facing"), sub=True),
    Case("sample-label-out-of-range", "sample", ("label=7",), ("label=7", "0..4")),
    Case("sample-unknown-sampler", "sample", ("sampler=nope",), ("sampler=nope", "euler", "lms"), sub=True),
    Case("sample-out-taken", "sample", ("out={samples}",), ("{samples}/samples.npz", "exists", "overwrite=true")),
    # -- checkpoints ----------------------------------------------------------------------------------------
    Case("ckpt-sample-missing", "sample", ("ckpt={case}/absent.ckpt",), ("{case}/absent.ckpt", "does not exist")),
    Case("ckpt-sample-directory", "sample", ("ckpt={case}",), ("{case}", "is a directory", "last.ckpt"),
         lambda c: c.mkdir(parents=True, exist_ok=True)),
    Case("ckpt-sample-truncated", "sample", ("ckpt={case}/cut.ckpt",), ("{case}/cut.ckpt", "not a readable checkpoint"),
         _truncated("{ckpt}", "cut.ckpt")),
    Case("ckpt-sample-random-bytes", "sample", ("ckpt={case}/random.ckpt",), ("{case}/random.ckpt", "not a readable checkpoint"),
         _write("random.ckpt", _RANDOM)),  # sample.py on a bad checkpoint as a subprocess: test_security.py
    Case("ckpt-sample-text-file", "sample", ("ckpt={case}/notes.ckpt",), ("{case}/notes.ckpt", "not a readable checkpoint"),
         _write("notes.ckpt", lambda: b"step 4, loss 0.97\n")),
    Case("ckpt-sample-npz", "sample", ("ckpt={case}/other.npz",), ("{case}/other.npz", "not a readable checkpoint"), _npz),
    Case("ckpt-sample-not-ours", "sample", ("ckpt={case}/plain.ckpt",), ("{case}/plain.ckpt", "not a checkpoint written by"),
         _not_ours),
    Case("ckpt-sample-safetensors-truncated", "sample", ("ckpt={case}/cut.safetensors",),
         ("{case}/cut.safetensors", "not a readable safetensors file"), _truncated("{export}", "cut.safetensors")),
    Case("ckpt-sample-safetensors-random", "sample", ("ckpt={case}/random.safetensors",),
         ("{case}/random.safetensors", "not a readable safetensors file"), _write("random.safetensors", _RANDOM)),
    Case("ckpt-sample-safetensors-without-config", "sample", ("ckpt={case}/bare.safetensors",),
         ("{case}/bare.safetensors", "lacks the model config"), _safetensors_without_config),
    Case("ckpt-train-missing", "train", ("ckpt_path={case}/absent.ckpt",), ("{case}/absent.ckpt", "does not exist")),
    Case("ckpt-train-last-missing", "train", ("ckpt_path=last",), ("{case}/run/checkpoints/last.ckpt", "does not exist")),
    Case("ckpt-train-truncated", "train", ("ckpt_path={case}/cut.ckpt",), ("{case}/cut.ckpt", "not a readable checkpoint"),
         _truncated("{ckpt}", "cut.ckpt")),
    Case("ckpt-train-not-ours", "train", ("ckpt_path={case}/plain.ckpt",), ("{case}/plain.ckpt", "not a checkpoint written by"),
         _not_ours),
    Case("ckpt-train-other-model", "train", ("hydra.run.dir={run_copy}", "ckpt_path=last", "network.base_channels=16"),
         ("{run_copy}/checkpoints/last.ckpt", "different model config", "network="), sub=True),
    Case("ckpt-train-other-model-in-place", "train", ("paths.output_dir={run_copy}", "ckpt_path=last", "network.channel_mult=[1,2,2]"),
         ("{run_copy}/checkpoints/last.ckpt", "different model config")),
    # -- evaluation (python -m diffusion.tools.evaluate) ----------------------------------------------------------
    Case("evaluate-samples-missing", "evaluate", ("samples={case}/absent.npz",), ("samples={case}/absent.npz", "not found")),
    Case("evaluate-samples-random-bytes", "evaluate", ("samples={case}/random.npz",), ("{case}/random.npz", "cannot read samples"),
         _write("random.npz", _RANDOM)),
    Case("evaluate-samples-without-images", "evaluate", ("samples={case}/other.npz",),
         ("error: {case}/other.npz holds no `images` array (found x)",), _npz),
    Case("evaluate-unknown-reference", "evaluate", ("samples={samples}", "reference=test"), ("reference=test", "val, train")),
    Case("evaluate-unknown-features", "evaluate", ("samples={samples}", "fid_features.features=clip"), ("fid_features.features='clip'",)),
]
SUB_CASES = [case for case in CASES if case.sub]


# --------------------------------------------------------------------------------- running a case


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def existing_samples(directory: Path) -> Path:
    """An earlier sample.py result: samples.npz and grid.png."""
    from diffusion.data import images

    pictures = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    images.save_npz(pictures, np.arange(4), directory / "samples.npz")
    images.save_png(images.grid(pictures, ncols=4), directory / "grid.png")
    return directory


def prepare(case: Path, spec: Case, context: dict[str, str]) -> list[str]:
    """Create the case's folder and files; return its overrides with every template filled in."""
    case.mkdir(parents=True)
    fill = {**context, "case": str(case), "run_copy": str(case / "run-copy"), "samples": str(case / "samples")}
    if spec.setup is not None:
        spec.setup(case)
    if any("{run_copy}" in arg for arg in spec.args):
        shutil.copytree(context["run"], case / "run-copy")
    existing_samples(case / "samples")
    args = [arg.format(**fill) for arg in spec.args]
    keys = {arg.split("=", 1)[0] for arg in args}
    if spec.script == "train":
        args = ([] if "data" in keys else ["data=sprites", f"data.dir={context['data']}"]) + args
        if not keys & {"hydra.run.dir", "paths.output_dir"}:
            args.append(f"{'hydra.run.dir' if spec.sub else 'paths.output_dir'}={case / 'run'}")
    elif spec.script == "sample":
        args = ([] if "ckpt" in keys else [f"ckpt={context['ckpt']}"]) + args
        if "out" not in keys:
            args += [f"out={case / 'samples'}", "overwrite=true"]  # only the error may keep it from writing
    else:
        args = ["data=sprites", f"data.dir={context['data']}", f"paths.root_dir={case / 'root'}", *args]
    return args


def words_of(case: Path, spec: Case, context: dict[str, str]) -> list[str]:
    fill = {**context, "case": str(case), "run_copy": str(case / "run-copy"), "samples": str(case / "samples")}
    return [word.format(**fill) for word in spec.words]


def run_in_process(spec: Case, args: list[str], capsys) -> tuple[object, str]:
    from diffusion.tools.cli import reports_user_errors

    if spec.script == "train":
        from diffusion.tools.train import train as body

        cfg = compose_config("train", TINY_TRAIN + args)
    elif spec.script == "sample":
        from diffusion.tools.sample import sample_to_folder as body

        cfg = compose_config("sample", args)
    else:
        from diffusion.tools.evaluate import evaluate as body

        cfg = compose_config("evaluate", args)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        reports_user_errors(body)(cfg)
    return info.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def context(tiny_run) -> dict[str, str]:
    _CONTEXT.update(data=str(tiny_run.data_dir), ckpt=str(tiny_run.ckpt), export=str(tiny_run.export),
                    run=str(tiny_run.run_dir))
    return dict(_CONTEXT)


@pytest.fixture(scope="module")
def shared_before(tiny_run) -> dict[str, bytes]:
    return snapshot(tiny_run.root)


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory, context, shared_before) -> dict[str, tuple]:
    """The subprocess cases, two at a time: {id: (folder, overrides, snapshot before, CompletedProcess)}."""
    root = tmp_path_factory.mktemp("bad-inputs-sub")
    prepared = {}
    for spec in SUB_CASES:
        case = root / spec.id
        args = prepare(case, spec, context)
        prepared[spec.id] = (case, args, snapshot(case))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {spec.id: pool.submit(run_script, f"{spec.script}.py", *prepared[spec.id][1]) for spec in SUB_CASES}
        return {name: (*prepared[name], future.result()) for name, future in futures.items()}


@pytest.mark.parametrize("spec", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(spec, context, subprocess_results, tmp_path, capsys):
    if spec.sub:
        case, args, before, proc = subprocess_results[spec.id]
        code, stderr, shown = proc.returncode, proc.stderr, describe(proc)
        assert "Traceback" not in proc.stdout + proc.stderr, shown
    else:
        case = tmp_path / spec.id
        args = prepare(case, spec, context)
        before = snapshot(case)
        code, stderr = run_in_process(spec, args, capsys)
        shown = f"args={args}\nstatus={code}\nstderr={stderr}"
    assert code == 2, shown
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for word in words_of(case, spec, context):
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"

    after = snapshot(case)
    changed = sorted(name for name, content in before.items() if after.get(name) != content)
    new = sorted(set(after) - set(before))
    if spec.strict:  # refused by the run-directory guard, before Hydra writes anything
        assert not changed and not new, f"changed or removed: {changed}; new: {new}"
    # Past Hydra's composition, a subprocess leaves Hydra's record of the command in the run directory: .hydra/
    # (rewritten in a resumed run's directory, as by every resume) and train.log. Nothing else may change or
    # appear: no checkpoint, config.yaml, metrics, samples.
    assert all(".hydra/" in name for name in changed), f"files changed or removed: {changed}"
    assert all(".hydra/" in name or name.endswith("train.log") for name in new), f"new files: {new}"


def test_the_table_covers_every_kind_through_the_entry_point():
    kinds = {case.id.split("-")[0] for case in SUB_CASES}
    assert {"data", "config", "ckpt", "sample"} <= kinds, kinds
    assert len({case.id for case in CASES}) == len(CASES)


def test_the_shared_run_is_untouched(tiny_run, shared_before, subprocess_results):
    """Runs after the table's cases (pytest keeps file order): the trained run they all read from."""
    assert snapshot(tiny_run.root) == shared_before
