"""Data modules on tiny generated fixtures: shapes, storage, scaling, splits, sharding, and every bad input
ending as a ConfigError whose message names the file and the problem."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGES_FILE, LABELS_FILE, compose_config, make_sprites, write_sprites
from hydra.utils import instantiate
from PIL import Image

from diffusion.core.errors import ConfigError
from diffusion.data import procedural, sources
from diffusion.data.datamodule import ImageFolder, NpySprites, ProceduralSprites, ShardedBatches


def npy_module(directory: Path, **kwargs) -> NpySprites:
    kwargs = {"batch_size": 16, "val_fraction": 0.1, **kwargs}
    return NpySprites(dir=str(directory), images=IMAGES_FILE, labels=LABELS_FILE, **kwargs)


def setup_error(dm) -> str:
    with pytest.raises(ConfigError) as info:
        dm.setup("fit")
    return str(info.value)


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def solid(h: int, w: int, rgb, alpha: int | None = None) -> np.ndarray:
    a = np.zeros((h, w, 3 if alpha is None else 4), dtype=np.uint8)
    a[..., :3] = rgb
    if alpha is not None:
        a[..., 3] = alpha
    return a


# --------------------------------------------------------------------------------- the course's .npy files


def test_npy_sprites_shapes_and_storage(sprite_dir):
    dm = npy_module(sprite_dir)
    dm.setup("fit")
    images, labels = dm.train_set.tensors
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert images.shape[1:] == (3, 16, 16)  # stored channels-first, as uint8
    assert len(dm.train_set) + len(dm.val_set) == 160
    assert len(dm.val_set) == 16  # round(160 * 0.1)
    assert dm.num_classes == 5 and dm.image_size == 16
    assert dm.class_names == ["hero", "non-hero", "food", "spell", "side-facing"]
    # the stored pixels are the file's pixels (NHWC -> NCHW), and labels are the one-hot's argmax
    raw_images, raw_labels = make_sprites(160)
    all_images = torch.cat([dm.train_set.tensors[0], dm.val_set.tensors[0]]).permute(0, 2, 3, 1).numpy()
    all_labels = torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1]]).numpy()
    order = np.lexsort(all_images.reshape(160, -1).T)
    raw_order = np.lexsort(raw_images.reshape(160, -1).T)
    assert np.array_equal(all_images[order], raw_images[raw_order])
    assert np.array_equal(all_labels[order], raw_labels.argmax(1)[raw_order])


def test_batches_are_scaled_to_minus_one_one(sprite_dir):
    dm = npy_module(sprite_dir, val_fraction=0.0, batch_size=160)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 1
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (160, 3, 16, 16)
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and torch.equal(y, labels)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0  # images 0 and 1 are black and white
    torch.testing.assert_close(x, images.float() / 127.5 - 1)


def test_loaders_batch_sizes(sprite_dir):
    dm = npy_module(sprite_dir, batch_size=32, val_fraction=0.1)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 144 // 32 and all(len(b[0]) == 32 for b in train)  # drop_last on training
    val = list(dm.val_dataloader())
    assert sum(len(b[0]) for b in val) == 16  # every validation image, once
    assert len(torch.cat([b[0] for b in train]).unique(dim=0)) == 128


def test_split_is_deterministic(sprite_dir):
    def val_images(split_seed):
        dm = npy_module(sprite_dir, split_seed=split_seed)
        dm.setup("fit")
        return dm.val_set.tensors[0]

    assert torch.equal(val_images(0), val_images(0))
    assert not torch.equal(val_images(0), val_images(1))


def test_setup_twice_keeps_the_split(sprite_dir):
    dm = npy_module(sprite_dir)
    dm.setup("fit")
    first = dm.train_set
    dm.setup("validate")
    assert dm.train_set is first


def test_integer_and_float_inputs(tmp_path):
    """Integer class labels (N,) and float images in 0..1 or 0..255 are accepted too."""
    images, labels = make_sprites(40)
    np.save(tmp_path / "a.npy", images.astype(np.float32) / 255)
    np.save(tmp_path / "b.npy", images.astype(np.float64))
    np.save(tmp_path / "l.npy", labels.argmax(1).astype(np.int64))
    for name in ("a.npy", "b.npy"):
        got, got_labels, names = sources.load_sprite_files(tmp_path, name, "l.npy")
        assert got.dtype == np.uint8 and np.array_equal(got, images)
        assert np.array_equal(got_labels, labels.argmax(1)) and names == list(sources.COURSE_CLASSES)


def test_unlabelled_and_named_classes(sprite_dir):
    dm = NpySprites(dir=str(sprite_dir), images=IMAGES_FILE, labels=None, batch_size=8)
    dm.setup("fit")
    assert dm.num_classes == 0 and (dm.train_set.tensors[1] == -1).all()
    names = ["a", "b", "c", "d", "e"]
    dm = NpySprites(dir=str(sprite_dir), images=IMAGES_FILE, labels=LABELS_FILE, class_names=names, batch_size=8)
    dm.setup("fit")
    assert dm.class_names == names
    message = setup_error(NpySprites(dir=str(sprite_dir), images=IMAGES_FILE, labels=LABELS_FILE, class_names=["a"]))
    assert "class_names" in message and "5 classes" in message


def test_hydra_config_builds_npy_sprites(sprite_dir):
    cfg = compose_config("train", ["data=sprites", f"data.dir={sprite_dir}", "data.batch_size=8"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, NpySprites)
    dm.setup("fit")
    assert dm.num_classes == 5 and dm.batch_size == 8


# --------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n, batch_size", [(100, 10), (103, 10), (7, 2)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_sharded_batches_disjoint_and_equal(n, batch_size, shuffle):
    ranks = [ShardedBatches(n, batch_size, shuffle, seed=3, rank=r, world_size=2, drop_last=shuffle) for r in (0, 1)]
    batches = [list(r) for r in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == len(ranks[1]) > 0
    seen = [torch.cat(b).tolist() for b in batches]
    assert [len(s) for s in seen] == [sum(len(b) for b in batches[1])] * 2  # equal image counts
    assert not set(seen[0]) & set(seen[1])
    assert all(len(set(s)) == len(s) and all(0 <= i < n for i in s) for s in seen)
    if not shuffle:  # validation: every image but the odd one out, once
        assert len(set(seen[0]) | set(seen[1])) == n - n % 2


def test_sharded_batches_epochs_and_seed():
    s = ShardedBatches(50, 5, True, seed=0)
    first = torch.cat(list(s))
    assert torch.equal(first, torch.cat(list(ShardedBatches(50, 5, True, seed=0))))
    s.set_epoch(1)
    assert not torch.equal(first, torch.cat(list(s)))
    assert sorted(first.tolist()) == list(range(50))


# --------------------------------------------------------------------------------- procedural


def test_procedural_sprites(tmp_path):
    dm = ProceduralSprites(n=40, generator_seed=0, cache_dir=str(tmp_path), batch_size=8, val_fraction=0.1)
    dm.prepare_data()
    cached = list(tmp_path.glob("procedural_40_0_*.npz"))
    assert len(cached) == 1
    dm.setup("fit")
    images, labels = dm.train_set.tensors
    assert images.dtype == torch.uint8 and images.shape == (36, 3, 16, 16)
    assert dm.class_names == ["hero", "non-hero", "food", "spell", "side-facing"]
    assert labels.dtype == torch.int64 and 0 <= int(labels.min()) and int(labels.max()) < 5
    # a second module reads the cache and gets the same data
    again = ProceduralSprites(n=40, generator_seed=0, cache_dir=str(tmp_path), batch_size=8, val_fraction=0.1)
    again.setup("fit")
    assert torch.equal(again.train_set.tensors[0], images) and torch.equal(again.val_set.tensors[0], dm.val_set.tensors[0])
    x, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape == (8, 3, 16, 16) and -1 <= float(x.min()) and float(x.max()) <= 1


def test_procedural_cache_is_keyed_by_every_module_of_the_generator(tmp_path, monkeypatch):
    """A cached .npz made by an older generator is never served: editing any of its modules changes the file name."""
    copy = tmp_path / "procedural"
    shutil.copytree(Path(procedural.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    dm = ProceduralSprites(n=40, cache_dir=str(tmp_path / "cache"))
    original = dm._cache_path()
    monkeypatch.setattr(procedural, "__file__", str(copy / "__init__.py"))
    assert dm._cache_path() == original
    palettes = copy / "palettes.py"
    palettes.write_text(palettes.read_text().replace("(140, 90, 45)", "(141, 90, 45)"))
    assert dm._cache_path() != original


def test_procedural_from_hydra_config(tmp_path):
    cfg = compose_config("train", ["data=procedural", "data.n=20", f"data.cache_dir={tmp_path}", "data.batch_size=4"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, ProceduralSprites)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 20


def test_procedural_too_small():
    with pytest.raises(ConfigError, match="data.n=5"):
        ProceduralSprites(n=5)


# --------------------------------------------------------------------------------- bad .npy input


@pytest.mark.parametrize("which", ["images", "labels"])
def test_missing_files_say_which_where_and_how_to_get_them(sprite_dir, which):
    missing = IMAGES_FILE if which == "images" else LABELS_FILE
    (sprite_dir / missing).unlink()
    message = setup_error(npy_module(sprite_dir))
    assert missing in message
    assert str(sprite_dir.resolve()) in message
    assert "DeepLearning.AI" in message and "data=procedural" in message
    present = LABELS_FILE if which == "images" else IMAGES_FILE
    assert f"file(s) {present}" not in message


def test_missing_directory(tmp_path):
    message = setup_error(npy_module(tmp_path / "nowhere"))
    assert IMAGES_FILE in message and LABELS_FILE in message and str(tmp_path / "nowhere") in message


def write_bad(directory: Path, images=None, labels=None) -> Path:
    good_images, good_labels = make_sprites(20)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / IMAGES_FILE, good_images if images is None else images, allow_pickle=True)
    np.save(directory / LABELS_FILE, good_labels if labels is None else labels, allow_pickle=True)
    return directory


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("which", [IMAGES_FILE, LABELS_FILE])
@pytest.mark.parametrize("keep", [0.5, 0.05, 0.0])
def test_truncated_npy(tmp_path, which, keep):
    directory = write_bad(tmp_path)
    truncate(directory / which, keep)
    message = setup_error(npy_module(directory))
    assert which in message


def test_not_an_npy_file(tmp_path):
    directory = write_bad(tmp_path)
    (directory / IMAGES_FILE).write_bytes(b"PK\x03\x04 this is a zip, or anything else")
    message = setup_error(npy_module(directory))
    assert IMAGES_FILE in message and "cannot read" in message


def test_npz_archive_instead_of_npy(tmp_path):
    """e.g. sample.py's samples.npz given as data.images: an archive, not an array."""
    directory = write_bad(tmp_path)
    images, _ = make_sprites(20)
    with open(directory / IMAGES_FILE, "wb") as f:
        np.savez(f, images=images)
    message = setup_error(npy_module(directory))
    assert IMAGES_FILE in message and ".npz" in message


_, _labels = make_sprites(20)
_images, _ = make_sprites(20)
_nan_images = _images.astype(np.float32)
_nan_images[3, 2, 1, 0] = np.nan
_nan_labels = _labels.copy()
_nan_labels[4, 0] = np.nan
_two_hot = _labels.copy()
_two_hot[0] = [1, 1, 0, 0, 0]


@pytest.mark.parametrize(
    "images, labels, file, words",
    [
        (np.full((20, 16, 16, 3), "a"), None, IMAGES_FILE, "dtype"),  # strings
        (_images.astype(bool), None, IMAGES_FILE, "dtype"),
        (np.array([None] * 20, dtype=object), None, IMAGES_FILE, "cannot read"),  # pickled objects
        (_images[..., 0], None, IMAGES_FILE, "shape"),  # no channels
        (_images.transpose(0, 3, 1, 2), None, IMAGES_FILE, "shape"),  # channels first
        (_images[:, :, :8], None, IMAGES_FILE, "shape"),  # not square
        (np.concatenate([_images, _images[..., :1]], axis=-1), None, IMAGES_FILE, "shape"),  # RGBA
        (_images[:0], _labels[:0], IMAGES_FILE, "no images"),
        (_nan_images, None, IMAGES_FILE, "NaN"),
        (_images.astype(np.float32) * 2 - 300, None, IMAGES_FILE, "0..255"),
        (_images[:15], None, LABELS_FILE, "20 labels for 15 images"),  # count mismatch
        (None, _labels[:12], LABELS_FILE, "12 labels for 20 images"),
        (None, _nan_labels, LABELS_FILE, "NaN"),
        (None, np.full((20, 5), "x"), LABELS_FILE, "labels"),
        (None, _two_hot, LABELS_FILE, "one-hot"),
        (None, _labels * 2, LABELS_FILE, "one-hot"),
        (None, np.zeros((20, 5)), LABELS_FILE, "one-hot"),
        (None, np.full(20, -1), LABELS_FILE, ">= 0"),
        (None, np.zeros((20, 5, 1)), LABELS_FILE, "labels"),
        (None, np.linspace(0, 4, 20), LABELS_FILE, "labels"),  # float class indices
    ],
    ids=[
        "str-images", "bool-images", "object-images", "3d-images", "channels-first", "non-square", "rgba",
        "empty", "nan-images", "out-of-range", "fewer-images", "fewer-labels", "nan-labels", "str-labels",
        "two-hot", "not-binary", "all-zero-rows", "negative-index", "3d-labels", "float-index",
    ],
)
def test_bad_npy_content(tmp_path, images, labels, file, words):
    directory = write_bad(tmp_path, images, labels)
    message = setup_error(npy_module(directory))
    assert file in message, message
    assert words in message, message


# --------------------------------------------------------------------------------- folders of PNGs


def folder_module(directory: Path, **kwargs) -> ImageFolder:
    return ImageFolder(dir=str(directory), **{"batch_size": 1, "val_fraction": 0.0, **kwargs})


def test_folder_of_pngs(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        save_png(tmp_path / f"im{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    save_png(tmp_path / "big.PNG", solid(32, 32, (10, 20, 30)))  # resized, upper-case suffix
    (tmp_path / "notes.txt").write_text("ignored")
    dm = folder_module(tmp_path)
    dm.setup("fit")
    images = dm.train_set.tensors[0]
    assert images.shape == (7, 3, 16, 16) and images.dtype == torch.uint8
    assert dm.num_classes == 0
    assert any((im.permute(1, 2, 0) == torch.tensor([10, 20, 30], dtype=torch.uint8)).all() for im in images)


def test_folder_transparency_on_background(tmp_path):
    save_png(tmp_path / "ghost.png", solid(16, 16, (200, 0, 0), alpha=0))
    images, labels, names = sources.load_image_folder(tmp_path, background=(1, 2, 3))
    assert labels is None and names == []
    assert (images == np.array([1, 2, 3], dtype=np.uint8)).all()


def test_subfolder_labels(tmp_path):
    for cls, colour, count in (("slime", (0, 200, 0), 2), ("bat", (80, 0, 80), 3)):
        for i in range(count):
            save_png(tmp_path / cls / f"{i}.png", solid(16, 16, colour))
    dm = folder_module(tmp_path)
    dm.setup("fit")
    assert dm.class_names == ["bat", "slime"] and dm.num_classes == 2
    images, labels = dm.train_set.tensors
    for im, label in zip(images, labels):
        expected = (80, 0, 80) if int(label) == 0 else (0, 200, 0)
        assert (im.permute(1, 2, 0) == torch.tensor(expected, dtype=torch.uint8)).all()
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1]
    # labels off: same images, no classes
    dm = folder_module(tmp_path, labels_from_subfolders=False)
    dm.setup("fit")
    assert dm.num_classes == 0 and len(dm.train_set) == 5


def test_subfolder_labels_need_every_image_in_a_class(tmp_path):
    save_png(tmp_path / "a" / "0.png", solid(16, 16, (1, 1, 1)))
    save_png(tmp_path / "loose.png", solid(16, 16, (2, 2, 2)))
    message = setup_error(folder_module(tmp_path))
    assert str(tmp_path) in message and "sub-folder" in message


def test_sprite_sheet_cut_into_cells(tmp_path):
    sheet = np.concatenate([solid(16, 16, (255, 0, 0)), solid(16, 16, (0, 0, 255))], axis=1)  # 32 wide, 16 high
    save_png(tmp_path / "sheet.png", sheet)
    dm = folder_module(tmp_path, cell_size=16)
    dm.setup("fit")
    images = dm.train_set.tensors[0].permute(0, 2, 3, 1)
    assert images.shape == (2, 16, 16, 3)
    colours = sorted(tuple(im[0, 0].tolist()) for im in images)
    assert colours == [(0, 0, 255), (255, 0, 0)]


def test_sprite_sheet_blank_cells_skipped_and_cells_resized(tmp_path):
    sheet = np.full((32, 64, 3), 255, dtype=np.uint8)  # a 2x2 sheet of 32px cells on white
    sheet[:32, :32] = (9, 9, 9)
    sheet[:32, 32:] = (7, 7, 7)
    save_png(tmp_path / "sheet.png", sheet)
    images, _, _ = sources.load_image_folder(tmp_path, image_size=16, cell_size=32)
    assert images.shape == (2, 16, 16, 3)
    save_png(tmp_path / "sheet.png", np.full((32, 64, 3), 255, dtype=np.uint8))
    message = setup_error(folder_module(tmp_path, cell_size=32))
    assert "blank" in message and "cell_size" in message


def test_sheet_not_a_multiple_of_the_cell_size(tmp_path):
    path = save_png(tmp_path / "sheet.png", solid(16, 40, (5, 5, 5)))
    message = setup_error(folder_module(tmp_path, cell_size=16))
    assert str(path) in message and "40x16" in message and "cell_size=16" in message


def test_non_square_image_without_cell_size(tmp_path):
    path = save_png(tmp_path / "wide.png", solid(16, 32, (5, 5, 5)))
    message = setup_error(folder_module(tmp_path))
    assert str(path) in message and "cell_size" in message


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "readme.txt").write_text("no images")
    message = setup_error(folder_module(tmp_path))
    assert str(tmp_path) in message and "no images" in message


def test_missing_folder(tmp_path):
    message = setup_error(folder_module(tmp_path / "absent"))
    assert str(tmp_path / "absent") in message and "does not exist" in message


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"not an image at all" * 10])
def test_corrupt_png(tmp_path, content):
    save_png(tmp_path / "ok.png", solid(16, 16, (1, 2, 3)))
    bad = tmp_path / "broken.png"
    bad.write_bytes(content)
    message = setup_error(folder_module(tmp_path))
    assert str(bad) in message and "cannot read image" in message


def test_truncated_png(tmp_path):
    good = save_png(tmp_path / "ok.png", np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    message = setup_error(folder_module(tmp_path))
    assert str(tmp_path / "cut.png") in message


# --------------------------------------------------------------------------------- bad data-module settings


@pytest.mark.parametrize("kwargs, words", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(val_fraction=-0.1), "val_fraction"),
])
def test_bad_settings(sprite_dir, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        npy_module(sprite_dir, **kwargs)


def test_nothing_left_to_train_on(tmp_path):
    write_sprites(tmp_path, n=10)
    message = setup_error(npy_module(tmp_path, val_fraction=0.97))
    assert "nothing to train on" in message


def test_batch_larger_than_the_data(tmp_path):
    write_sprites(tmp_path, n=20)
    dm = npy_module(tmp_path, batch_size=64, val_fraction=0.1)
    with pytest.raises(ConfigError, match="batch_size=64 exceeds the 18 training images"):
        dm.setup("fit")  # caught before the trainer starts, so the error stays one line
    small = npy_module(tmp_path, batch_size=8, val_fraction=0.5)
    small.setup("fit")
    assert sum(len(b[0]) for b in small.val_dataloader()) == 10  # validation keeps every image
