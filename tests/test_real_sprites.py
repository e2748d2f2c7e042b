"""make_kenney on tiny synthetic wheels: which sprites each set writes, sheets cut into cells, blank and repeated
images (judged at 16x16, as data=folder sees them) left out, and bad wheels refused in one line."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from diffusion.data.sources import load_image_folder
from diffusion.tools import make_kenney

IMAGES = "arcade/resources/assets/images/"
PROCGEN = "procgen/data/assets/"


def png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def solid(size: int, colour: tuple[int, int, int], width: int | None = None) -> np.ndarray:
    image = np.zeros((size, width or size, 4), np.uint8)
    image[...] = (*colour, 255)
    return image


def sheet() -> np.ndarray:
    """2x2 cells of 128: red, green / transparent, blue."""
    image = np.zeros((256, 256, 4), np.uint8)
    image[:128, :128] = (200, 0, 0, 255)
    image[:128, 128:] = (0, 200, 0, 255)
    image[128:, 128:] = (0, 0, 200, 255)
    return image


def slime() -> np.ndarray:
    image = solid(16, (90, 30, 120))
    image[4:8, 4:8] = (250, 250, 0, 255)
    return image


@pytest.fixture
def wheels(tmp_path):
    arcade, procgen = tmp_path / "arcade-3.3.3-py3-none-any.whl", tmp_path / "procgen-0.10.7-cp310-cp310-linux.whl"
    with zipfile.ZipFile(arcade, "w") as archive:
        archive.writestr(IMAGES + "License.txt", "CC0")
        archive.writestr(IMAGES + "animated_characters/hero.png", png(solid(12, (10, 120, 10), width=8)))
        archive.writestr(IMAGES + "enemies/slime.png", png(slime()))
        archive.writestr(IMAGES + "enemies/slime_copy.png", png(slime()))
        archive.writestr(IMAGES + "tiles/blank.png", png(np.zeros((16, 16, 4))))
        archive.writestr(IMAGES + "spritesheets/tiles.png", png(sheet()))
        archive.writestr(IMAGES + "cards/ace.png", png(solid(20, (240, 240, 240), width=14)))
        archive.writestr("arcade/resources/assets/onscreen_controls/flat_dark/a.png", png(solid(16, (1, 2, 3))))
    # the slime again at twice the size: a repeat only once downscaled to 16x16
    big_slime = slime().repeat(2, axis=0).repeat(2, axis=1)
    with zipfile.ZipFile(procgen, "w") as archive:
        archive.writestr(PROCGEN + "kenney/Items/gem.png", png(solid(128, (0, 150, 250))))
        archive.writestr(PROCGEN + "kenney/Items/slime big.png", png(big_slime))
        archive.writestr(PROCGEN + "kenney-abstract/Other/plant.png", png(solid(64, (30, 200, 60))))
        archive.writestr(PROCGEN + "kenney/Backgrounds/sky.png", png(solid(64, (100, 100, 255))))
        archive.writestr(PROCGEN + "misc_assets/frog.png", png(solid(64, (0, 90, 0))))
    return str(arcade), str(procgen)


def written(out) -> dict[str, list[str]]:
    return {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(out.iterdir())}


def test_the_real_set_cuts_sheets_and_drops_blanks_and_repeats(wheels, tmp_path, capsys):
    out = tmp_path / "real"
    make_kenney.main(["--set", "real", *wheels, str(out)])
    assert written(out) == {
        "cards": ["cards__ace.png"],
        "characters": ["animated_characters__hero.png"],
        "enemies": ["enemies__slime.png"],
        "items": ["procgen__kenney__Items__gem.png"],
        "props": ["procgen__kenney-abstract__Other__plant.png"],
        "tiles": ["spritesheets__tiles__r00c00.png", "spritesheets__tiles__r00c01.png", "spritesheets__tiles__r01c01.png"],
    }
    line = capsys.readouterr().out
    assert "8 sprites in" in line and "tiles 3" in line and "(2 blank and 2 duplicate images left out)" in line
    images, labels, classes = load_image_folder(out)
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images) == 8
    assert classes == ["cards", "characters", "enemies", "items", "props", "tiles"]


def test_the_kenney_set_stays_as_measured(wheels, tmp_path, capsys):
    out = tmp_path / "kenney"
    make_kenney.main([wheels[0], str(out)])
    # unscreened, as its 404 figures were taken: the repeated slime and the blank tile stay; no sheets, no cards
    assert written(out) == {
        "characters": ["animated_characters__hero.png"],
        "enemies": ["enemies__slime.png", "enemies__slime_copy.png"],
        "tiles": ["tiles__blank.png"],
    }
    assert "4 sprites in" in capsys.readouterr().out
    with Image.open(out / "characters" / "animated_characters__hero.png") as hero:
        assert hero.size == (12, 12)
    # a second run into the same folder would mix old files into the new set: refused, nothing touched
    (out / "tiles" / "stale.png").write_bytes(b"x")
    with pytest.raises(SystemExit) as info:
        make_kenney.main(["--set", "real", wheels[0], str(out)])
    assert info.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert (out / "tiles" / "stale.png").read_bytes() == b"x" and not (out / "cards").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["missing.whl", "OUT"], "missing.whl as a wheel"),
        (["--set", "real", "ARCADE", "OUT"], "no wheel given holds procgen/data/assets/"),
    ],
)
def test_a_bad_wheel_is_one_error_line_and_exit_2(wheels, tmp_path, capsys, args, says):
    args = [wheels[0] if a == "ARCADE" else str(tmp_path / a) if a in ("missing.whl", "OUT") else a for a in args]
    with pytest.raises(SystemExit) as info:
        make_kenney.main(args)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert err.startswith("error: ") and says in err and "pip download" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "OUT").exists()
