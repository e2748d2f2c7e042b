"""Loading and checking sprite arrays from disk: the course's .npy format and folders of PNGs.

Every source returns ``(images, labels, class_names)``: images uint8 (N, H, W, 3) as in the course's
``sprites_1788_16x16.npy``, labels int64 (N,) class indices (or None), and the class names.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from diffusion.core.errors import ConfigError

COURSE_CLASSES = ("hero", "non-hero", "food", "spell", "side-facing")
COURSE_FILES_HINT = (
    "the course's files come with the DeepLearning.AI short course 'How Diffusion Models Work' "
    "(sprites_1788_16x16.npy, sprite_labels_nc_1788_16x16.npy); copy them into data.dir, "
    "or train on the embedded data with data=procedural"
)


def load_npy(path: Path, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"cannot read {what} file {path}: {err}; re-copy or regenerate it") from None
    if not isinstance(array, np.ndarray):  # np.load opens an .npz archive as an NpzFile
        keys = ", ".join(array.files)
        array.close()
        raise ConfigError(f"cannot read {what} file {path}: it is an .npz archive ({keys}), not one .npy array; save the array with np.save")
    return array


def check_images(images: np.ndarray, where: str) -> np.ndarray:
    """Validate an image array and return it as uint8 (N, H, W, 3)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ConfigError(f"{where}: images must have shape (N, H, W, 3) with H == W, got {images.shape}")
    if len(images) == 0:
        raise ConfigError(f"{where}: holds no images")
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "uif":  # not bool, complex, timedelta, strings or objects
        raise ConfigError(f"{where}: images must be uint8 0..255 (or floats), got dtype {images.dtype}")
    if not np.isfinite(images).all():
        raise ConfigError(f"{where}: images contain NaN or infinite values; fix or regenerate the file")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 255:
        raise ConfigError(f"{where}: pixel values must lie in 0..255 (or 0..1), found {lo:g}..{hi:g}")
    scale = 255.0 if hi <= 1.0 else 1.0
    return np.round(images.astype(np.float64) * scale).astype(np.uint8)


def check_labels(labels: np.ndarray, n_images: int, where: str) -> np.ndarray:
    """Accept one-hot (N, C) or integer (N,) labels; return int64 class indices."""
    if labels.ndim == 2:
        if not np.issubdtype(labels.dtype, np.number) or not np.isfinite(labels).all():
            raise ConfigError(f"{where}: labels contain NaN, infinite or non-numeric values")
        if labels.shape[1] == 0 or not np.allclose(labels.sum(axis=1), 1) or ((labels != 0) & (labels != 1)).any():
            raise ConfigError(f"{where}: labels of shape {labels.shape} must be one-hot rows (a single 1 per row)")
        indices = labels.argmax(axis=1)
    elif labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
        if (labels < 0).any():
            raise ConfigError(f"{where}: integer labels must be >= 0")
        indices = labels
    else:
        raise ConfigError(f"{where}: labels must be one-hot (N, C) or integer (N,), got {labels.dtype} {labels.shape}")
    if len(indices) != n_images:
        raise ConfigError(f"{where}: {len(indices)} labels for {n_images} images; the counts must match")
    return indices.astype(np.int64)


def load_sprite_files(directory: str | Path, images: str, labels: str | None, class_names=None):
    """The course's format: uint8 images (N, 16, 16, 3) and float one-hot labels (N, C) in two .npy files."""
    directory = Path(directory).expanduser()
    files = [directory / images] + ([directory / labels] if labels else [])
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"missing sprite file(s) {', '.join(missing)} in {directory.resolve()}: {COURSE_FILES_HINT}")
    image_array = check_images(load_npy(files[0], "images"), str(files[0]))
    if labels is None:
        return image_array, None, []
    label_array = load_npy(files[1], "labels")
    indices = check_labels(label_array, len(image_array), str(files[1]))
    n_classes = label_array.shape[1] if label_array.ndim == 2 else int(indices.max()) + 1
    return image_array, indices, resolve_class_names(class_names, n_classes)


def resolve_class_names(class_names, n_classes: int) -> list[str]:
    if class_names:
        if len(class_names) != n_classes:
            raise ConfigError(f"data.class_names lists {len(class_names)} names for {n_classes} classes in the labels")
        return [str(c) for c in class_names]
    if n_classes == len(COURSE_CLASSES):
        return list(COURSE_CLASSES)
    return [f"class{i}" for i in range(n_classes)]


IMAGE_SUFFIXES = (".png", ".gif", ".bmp", ".jpg", ".jpeg", ".webp")


def load_image_folder(
    directory: str | Path,
    image_size: int = 16,
    cell_size: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    labels_from_subfolders: bool = True,
    skip_blank_cells: bool = True,
):
    """Images (or sprite sheets cut into ``cell_size`` cells) from a folder, composited on ``background``
    and resized to ``image_size`` with nearest-neighbour (pixel art stays crisp). Labels come from the
    first-level sub-folder names when ``labels_from_subfolders`` and there are sub-folders."""
    from PIL import Image, UnidentifiedImageError

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"image folder {directory} does not exist; set data.dir to a folder of PNG images")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"image folder {directory} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some or fix data.dir")
    classes = sorted({p.relative_to(directory).parts[0] for p in files if len(p.relative_to(directory).parts) > 1})
    use_labels = labels_from_subfolders and bool(classes)
    crops, labels = [], []
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()
                rgba = im.convert("RGBA")
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ConfigError(f"cannot read image {path}: {err}; remove or replace the file") from None
        sheet = flatten(rgba, background)
        for cell in _cells(sheet, cell_size, path):
            if skip_blank_cells and cell_size and (cell == np.asarray(background, np.uint8)).all():
                continue
            crops.append(downscale(cell, image_size))
            if use_labels:
                parts = path.relative_to(directory).parts
                labels.append(classes.index(parts[0]) if len(parts) > 1 else -1)
    if not crops:
        raise ConfigError(f"image folder {directory}: every sprite-sheet cell is blank; check data.cell_size")
    images = np.stack(crops)
    if not use_labels:
        return images, None, []
    label_array = np.asarray(labels, dtype=np.int64)
    if (label_array < 0).any():
        raise ConfigError(f"image folder {directory}: with sub-folder labels every image must sit in a class sub-folder")
    return images, label_array, classes


def flatten(image, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A PIL image composited on ``background``, as (H, W, 3) uint8: transparency as the model sees it."""
    from PIL import Image

    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (*background, 255))
    flat.alpha_composite(rgba)
    return np.asarray(flat.convert("RGB"))


def downscale(cell: np.ndarray, image_size: int) -> np.ndarray:
    """An (H, W, 3) image at ``image_size`` by nearest neighbour (pixel art stays crisp)."""
    from PIL import Image

    if cell.shape[0] == image_size and cell.shape[1] == image_size:
        return cell
    return np.asarray(Image.fromarray(cell).resize((image_size, image_size), Image.NEAREST))


def _cells(sheet: np.ndarray, cell_size: int | None, path: Path):
    if not cell_size:
        if sheet.shape[0] != sheet.shape[1]:
            raise ConfigError(f"image {path} is {sheet.shape[1]}x{sheet.shape[0]}, not square; set data.cell_size to cut it as a sprite sheet")
        yield sheet
        return
    h, w = sheet.shape[:2]
    if h % cell_size or w % cell_size:
        raise ConfigError(f"sprite sheet {path} is {w}x{h}, not a multiple of data.cell_size={cell_size}; fix the cell size")
    for y in range(0, h, cell_size):
        for x in range(0, w, cell_size):
            yield sheet[y : y + cell_size, x : x + cell_size]
