"""A real, hand-drawn sprite folder for data=folder: Kenney's CC0 game sprites as shipped in the `arcade` wheel.

    pip download --no-deps arcade==3.3.3 -d /tmp/arcade
    python -m diffusion.tools.make_kenney /tmp/arcade/arcade-3.3.3-py3-none-any.whl data/kenney
    python train.py data=folder data.dir=data/kenney data.batch_size=100

The wheel's ``arcade/resources/assets/images/`` holds a subset of Kenney's packs (kenney.nl), licensed CC0
(its License.txt). This command reads the wheel as the zip it is, keeps the game sprites (not the cards,
backgrounds, GUI or controller glyphs), pads each to a square on transparency (the folder loader refuses
non-square images) and writes ``OUT/<class>/<name>.png``, one class a sprite family. The folder loader then
composites them on ``data.background`` and downscales them to ``data.image_size`` (16) itself, so what the
model sees is exactly what ``data=folder`` makes of any folder.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path, PurePosixPath

from PIL import Image

from diffusion.core.errors import ConfigError, OneLineArgumentParser
from diffusion.tools.cli import reports_user_errors

IMAGES = "arcade/resources/assets/images/"
# class -> the folders of the wheel's images/ that make it
CLASSES = {
    "characters": ("animated_characters/",),
    "enemies": ("enemies/",),
    "items": ("items/",),
    "space": ("space_shooter/", "alien/"),
    "tanks": ("topdown_tanks/",),
    "tiles": ("tiles/",),
}


def square(image: Image.Image) -> Image.Image:
    """The image centred on a transparent square as wide as its longer side."""
    rgba = image.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    return canvas


def make_folder(wheel: str, out: str) -> dict[str, int]:
    """Write the class folders; return the image count of each class."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as err:
        raise ConfigError(f"cannot read {wheel} as a wheel ({err}); download it with pip download --no-deps arcade") from None
    counts = {name: 0 for name in CLASSES}
    with archive:
        for member in sorted(archive.namelist()):
            if not (member.startswith(IMAGES) and member.endswith(".png")):
                continue
            relative = member[len(IMAGES):]
            label = next((c for c, prefixes in CLASSES.items() if relative.startswith(prefixes)), None)
            if label is None:
                continue
            with Image.open(io.BytesIO(archive.read(member))) as image:
                picture = square(image)
            target = Path(out) / label / (PurePosixPath(relative).with_suffix("").as_posix().replace("/", "__") + ".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            picture.save(target)
            counts[label] += 1
    if not any(counts.values()):
        raise ConfigError(f"{wheel} holds no sprites under {IMAGES}; pass the arcade wheel (3.x)")
    return counts


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", help="the arcade wheel (.whl) from `pip download --no-deps arcade`")
    parser.add_argument("out", help="the folder to write (OUT/<class>/<name>.png)")
    args = parser.parse_args(argv)
    counts = make_folder(args.wheel, args.out)
    listing = ", ".join(f"{name} {n}" for name, n in counts.items())
    print(f"{sum(counts.values())} sprites in {args.out}: {listing}")


if __name__ == "__main__":
    main()
