"""Real, hand-drawn sprite folders for data=folder: Kenney's CC0 game sprites as shipped in Python wheels.

    pip download --no-deps arcade==3.3.3 -d /tmp/wheels
    python -m diffusion.tools.make_kenney /tmp/wheels/arcade-3.3.3-py3-none-any.whl data/kenney
    python train.py data=folder data.dir=data/kenney data.batch_size=100

    pip download --no-deps --only-binary=:all: --python-version 3.10 --platform manylinux_2_17_x86_64 procgen==0.10.7 -d /tmp/wheels
    python -m diffusion.tools.make_kenney --set real /tmp/wheels/arcade-3.3.3-py3-none-any.whl /tmp/wheels/procgen-0.10.7-*.whl data/realset

``--set kenney`` (the default) writes, unscreened, the 404 sprites of the arcade wheel's ``arcade/resources/assets/images/`` in
6 classes, the set BENCHMARKS.md measures. ``--set real`` adds Kenney's packs that procgen's wheel carries under
``procgen/data/assets/kenney/`` and ``kenney-abstract/``, arcade's playing cards, and arcade's tile sheet cut into its
128-pixel tiles: 972 sprites in 10 classes, the kenney set's 6 classes holding its images (less its 5 repeats) and more. Both are Kenney's (kenney.nl),
licensed CC0: arcade's images/License.txt says so; procgen's wheel carries no asset licence, its repository's
ASSET_LICENSES.md lists "Many Game Asset Packs, Author: kenney, CC0", and only its Kenney folders are read (not
its backgrounds or misc_assets, which mix in CC-BY art).

The command reads the wheels as the zips they are, in sorted member order, pads each sprite to a square on
transparency (the folder loader refuses non-square images) and writes ``OUT/<class>/<name>.png``. An image that
is blank, or the same as one already written, once composited on ``data.background`` and downscaled to
``data.image_size`` (the folder loader's own steps, at its default white background; ``--image-size``) is left out: it would
only repeat a training image or show the model an empty square.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from diffusion.core.errors import ConfigError, OneLineArgumentParser
from diffusion.data.sources import downscale, flatten
from diffusion.tools.cli import reports_user_errors

IMAGES = "arcade/resources/assets/images/"
PROCGEN = "procgen/data/assets/"
ARCADE_WHEEL = "pip download --no-deps arcade==3.3.3"
PROCGEN_WHEEL = (
    "pip download --no-deps --only-binary=:all: --python-version 3.10 --platform manylinux_2_17_x86_64 procgen==0.10.7"
)
# class -> the wheel folders that make it; the kenney set keeps exactly the folders its 404 figures were taken on
SETS = {
    "kenney": {
        "characters": (IMAGES + "animated_characters/",),
        "enemies": (IMAGES + "enemies/",),
        "items": (IMAGES + "items/",),
        "space": (IMAGES + "space_shooter/", IMAGES + "alien/"),
        "tanks": (IMAGES + "topdown_tanks/",),
        "tiles": (IMAGES + "tiles/",),
    },
    "real": {
        "cards": (IMAGES + "cards/",),
        # procgen's players come twice, padded to 128x256 and cropped to the figure: the crops fill more of 16x16
        "characters": (IMAGES + "animated_characters/", PROCGEN + "kenney/Players/Variable sizes/", PROCGEN + "kenney-abstract/Players/"),
        "enemies": (IMAGES + "enemies/", PROCGEN + "kenney/Enemies/", PROCGEN + "kenney-abstract/Enemies/"),
        "ground": (PROCGEN + "kenney/Ground/", PROCGEN + "kenney-abstract/GroundThemes/"),
        "hud": (PROCGEN + "kenney/HUD/",),
        "items": (IMAGES + "items/", PROCGEN + "kenney/Items/", PROCGEN + "kenney-abstract/Items/"),
        "props": (PROCGEN + "kenney-abstract/Other/",),
        "space": (IMAGES + "space_shooter/", IMAGES + "alien/"),
        "tanks": (IMAGES + "topdown_tanks/",),
        "tiles": (IMAGES + "tiles/", IMAGES + "spritesheets/tiles.png", PROCGEN + "kenney/Tiles/", PROCGEN + "kenney-abstract/Tiles/"),
    },
}
# sheet -> the side of its square cells, laid edge to edge
SHEETS = {IMAGES + "spritesheets/tiles.png": 128}
# a set's wheels, by a folder only that wheel holds, and how to get it
WHEELS = {IMAGES: ARCADE_WHEEL, PROCGEN: PROCGEN_WHEEL}


def square(image: Image.Image) -> Image.Image:
    """The image centred on a transparent square as wide as its longer side."""
    rgba = image.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    return canvas


def sprites(image: Image.Image, cell: int | None):
    """(suffix, sprite) of an image: itself, or each cell of a sheet, row by row."""
    if cell is None:
        yield "", image
        return
    for row in range(image.height // cell):
        for col in range(image.width // cell):
            yield f"__r{row:02d}c{col:02d}", image.crop((col * cell, row * cell, (col + 1) * cell, (row + 1) * cell))


def read_wheels(wheels: list[str]) -> dict[str, bytes]:
    """Every PNG member of the wheels by its path; a later wheel's member of the same path is ignored."""
    members: dict[str, bytes] = {}
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as archive:
                for name in sorted(archive.namelist()):
                    if name.endswith(".png") and name not in members:
                        members[name] = archive.read(name)
        except (OSError, zipfile.BadZipFile) as err:
            raise ConfigError(f"cannot read {wheel} as a wheel ({err}); get arcade's with {ARCADE_WHEEL} (--help shows procgen's)") from None
    return members


def make_folder(
    wheels: list[str] | str, out: str, which: str = "kenney", image_size: int = 16, background=(255, 255, 255)
) -> dict[str, dict[str, int]]:
    """Write the class folders of set ``which``; return per class the images written and those left out as
    blank or as duplicates."""
    classes = SETS[which]
    members = read_wheels([wheels] if isinstance(wheels, str) else list(wheels))
    needed = {root for prefixes in classes.values() for prefix in prefixes for root in WHEELS if prefix.startswith(root)}
    for root in sorted(needed):
        if not any(name.startswith(root) for name in members):
            raise ConfigError(f"no wheel given holds {root}, which --set {which} reads; get it with {WHEELS[root]} and pass it too")
    counts = {label: {"written": 0, "blank": 0, "duplicate": 0} for label in classes}
    # the kenney set stays the 404 images its figures were measured on: 5 of them repeat another at 16x16
    screen = which != "kenney"
    seen: set[bytes] = set()
    for member in sorted(members):
        label = next((c for c, prefixes in classes.items() if member.startswith(prefixes)), None)
        if label is None:
            continue
        root = next(r for r in WHEELS if member.startswith(r))
        stem = PurePosixPath(member[len(root):]).with_suffix("").as_posix().replace("/", "__").replace(" ", "_")
        stem = stem if root == IMAGES else "procgen__" + stem
        with Image.open(io.BytesIO(members[member])) as image:
            image.load()
            for suffix, sprite in sprites(image, SHEETS.get(member)):
                picture = square(sprite)
                small = downscale(flatten(picture, background), image_size).tobytes()
                if screen and small == np.asarray(background, np.uint8).tobytes() * image_size * image_size:
                    counts[label]["blank"] += 1
                    continue
                if screen and small in seen:
                    counts[label]["duplicate"] += 1
                    continue
                seen.add(small)
                target = Path(out) / label / f"{stem}{suffix}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                picture.save(target)
                counts[label]["written"] += 1
    if not any(c["written"] for c in counts.values()):
        raise ConfigError(f"the wheels hold no sprites under {IMAGES}; pass the arcade wheel (3.x): {ARCADE_WHEEL}")
    return counts


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("wheels", nargs="+", help="the arcade wheel (.whl), and for --set real procgen's too")
    parser.add_argument("out", help="the folder to write (OUT/<class>/<name>.png)")
    parser.add_argument("--set", dest="which", choices=sorted(SETS), default="kenney", help="kenney: the 404-sprite set (default); real: 972 sprites in 10 classes")
    parser.add_argument("--image-size", type=int, default=16, help="the data.image_size at which duplicates and blanks are judged")
    args = parser.parse_args(argv)
    if args.image_size < 1:
        parser.error(f"argument --image-size: {args.image_size} must be an integer >= 1")
    if Path(args.out).is_dir() and any(Path(args.out).iterdir()):  # old files would join the new set unseen
        parser.error(f"{args.out} is not empty: write the set into a new folder (or delete this one first)")
    counts = make_folder(args.wheels, args.out, args.which, args.image_size)
    listing = ", ".join(f"{name} {c['written']}" for name, c in counts.items())
    blank, dupes = sum(c["blank"] for c in counts.values()), sum(c["duplicate"] for c in counts.values())
    print(f"{sum(c['written'] for c in counts.values())} sprites in {args.out}: {listing} ({blank} blank and {dupes} duplicate images left out)")


if __name__ == "__main__":
    main()
