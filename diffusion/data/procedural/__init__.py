"""Procedural 16x16 pixel-art game sprites: the framework's default training data.

The five classes mirror the sprite set of DeepLearning.AI's "How Diffusion Models
Work" course (hero, non-hero, food, spell, side-facing) so that experiments run
without a download.  Every sprite is drawn from parametrised primitives
(ellipses, boxes, capsules, convex polygons, stars) evaluated on the 16x16 pixel
grid for a whole batch at once: parameters are arrays shaped (n, 1, 1) that
broadcast against the grid.  Parts are painted back to front as palette slots,
then every shape gets a dark 1-px outline and the sprite is jittered by a pixel
or two.  Nothing loops over individual sprites, so 90k sprites take seconds.

The package, by job: ``shapes`` (the pixel grid and the primitives), ``palettes`` (material colours, HSV),
``canvas`` (painting palette slots, outlines, rendering), one module of drawings per class (``heroes``,
``non_heroes``, ``food``, ``spells``, ``side_facing``), and here the public API: ``CLASSES``,
``generate_sprites`` and the preview.

Run ``python -m diffusion.data.procedural --n 64 --preview out.png`` for a preview, and
``--folder DIR`` to also write the sprites as DIR/<class>/<index>.png, a folder for ``data=folder``.
"""

import numpy as np

from diffusion.data.procedural import food, heroes, non_heroes, side_facing, spells
from diffusion.data.procedural.canvas import Canvas
from diffusion.data.procedural.shapes import SIZE

CLASSES = ("hero", "non-hero", "food", "spell", "side-facing")

_SYMMETRIC_CLASSES = ("hero", "non-hero")  # shaded without a right-hand rim

# (draw function, relative weight) per class, in CLASSES order.
_VARIANTS = (heroes.VARIANTS, non_heroes.VARIANTS, food.VARIANTS, spells.VARIANTS, side_facing.VARIANTS)


def generate_sprites(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (n,16,16,3), labels int64 (n,)), classes balanced
    (n // 5 each, remainder spread), deterministic by seed.

    Labels index CLASSES and come shuffled; each class is split at random over
    its variants, and every variant is drawn as one vectorised batch.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for label, variants in enumerate(_VARIANTS):
        members = np.flatnonzero(labels == label)
        weights = np.array([w for _, w in variants], float)
        which = rng.choice(len(variants), len(members), p=weights / weights.sum())
        for index, (draw, _) in enumerate(variants):
            chosen = members[which == index]
            if len(chosen):
                batch = Canvas(len(chosen), rng, symmetric=CLASSES[label] in _SYMMETRIC_CLASSES)
                draw(batch)
                images[chosen] = batch.render()
    return images, labels


def preview_grid(images, labels, columns=8, scale=8, gap=2):
    """Tile sprites into one RGB array, a block of rows per class, upscaled."""
    tiles = []
    for label in range(len(CLASSES)):
        members = images[labels == label]
        rows = -(-len(members) // columns)
        block = np.full((rows * columns, SIZE, SIZE, 3), 128, np.uint8)
        block[:len(members)] = members
        tiles.append(block)
    tiles = np.concatenate(tiles)
    tiles = tiles.repeat(scale, 1).repeat(scale, 2)
    tiles = np.pad(tiles, ((0, 0), (gap, 0), (gap, 0), (0, 0)), constant_values=128)
    rows = len(tiles) // columns
    cell = SIZE * scale + gap
    grid = tiles.reshape(rows, columns, cell, cell, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * cell, columns * cell, 3)
    return np.pad(grid, ((0, gap), (0, gap), (0, 0)), constant_values=128)


def main(argv=None):
    import os

    from PIL import Image

    from diffusion.core.errors import OneLineArgumentParser

    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="number of sprites")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", default="docs/procedural_preview.png", help="output PNG path")
    parser.add_argument("--folder", help="also write every sprite as FOLDER/<class>/<index>.png (for data=folder)")
    args = parser.parse_args(argv)
    images, labels = generate_sprites(args.n, args.seed)
    os.makedirs(os.path.dirname(args.preview) or ".", exist_ok=True)
    Image.fromarray(preview_grid(images, labels)).save(args.preview)
    print(f"wrote {args.preview}: {args.n} sprites, seed {args.seed}")
    if args.folder:
        for index, (image, label) in enumerate(zip(images, labels)):
            class_dir = os.path.join(args.folder, CLASSES[label])
            os.makedirs(class_dir, exist_ok=True)
            Image.fromarray(image).save(os.path.join(class_dir, f"{index:06d}.png"))
        print(f"wrote {args.n} sprites into {args.folder}/<class>/")
