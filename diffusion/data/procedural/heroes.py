"""Class 'hero': front-facing chibi adventurers with headwear and gear."""

import numpy as np

from diffusion.data.procedural.canvas import OUTLINE
from diffusion.data.procedural.palettes import HAIR, METAL, SKIN, WOOD
from diffusion.data.procedural.shapes import X, Y, box, capsule, ellipse, polygon


class Outfit:
    """The few palette slots one character is painted with, shared between parts
    so that a sprite keeps a small palette however much gear it carries."""

    def __init__(self, c):
        self.skin = c.add(c.pick(SKIN))
        self.hair = c.tone(c.pick(HAIR), 0.25)
        self.cloth = c.tone(c.hsv((0, 1), (0.45, 0.9), (0.45, 0.9)), 0.3)
        self.trousers = c.tone(c.hsv((0, 1), (0.2, 0.6), (0.3, 0.6)), 0.35)
        self.leather = c.add(c.pick(WOOD, 20))
        self.metal = c.tone(c.pick(METAL), 0.3)
        self.accent = c.tone(c.hsv((0, 1), (0.6, 1.0), (0.75, 1.0)), 0.3)


class _Head:
    """Geometry of a front-facing head, shared by the headwear painters."""

    def __init__(self, c, cy, cx, ry, rx):
        self.cy, self.cx, self.ry, self.rx = cy, cx, ry, rx
        self.top = cy - ry
        self.ax = np.abs(X - cx)
        self.mask = ellipse(cy, cx, ry, rx)
        self.eye_row = np.round(cy + c.uniform(0.3, 1.0))
        self.eye_x = c.snap(rx * c.uniform(0.28, 0.45), cx)


def _hero(c, headwear):
    """Front-facing chibi adventurer: legs, tunic, arms, big head, headwear, gear."""
    cx = c.centre()
    ax = np.abs(X - cx)
    tall_hat = headwear in ("wizard", "crown")
    ry = c.uniform(2.9, 3.3) if tall_hat else c.uniform(3.3, 3.8)
    bottom = 9.4 if tall_hat else 8.6  # hats need the rows above the head
    head = _Head(c, bottom - ry, cx, ry, ry * c.uniform(1.1, 1.35))
    body_top = float(np.floor(bottom) + 1)
    bw = c.snap(c.uniform(1.6, 2.8), cx)  # body half-width, on the pixel grid
    kit = Outfit(c)

    if headwear == "hair":
        long_hair = box(head.cy, body_top + c.uniform(0.5, 2.5), 0, head.rx + 0.2, x=ax) & c.chance(0.35)
        c.paint(long_hair, kit.hair[1])
    if headwear == "hood":
        c.paint(box(body_top, 13.6, 0, bw + 1.5, x=ax), kit.cloth[1])
    robe = c.chance(0.8 if headwear in ("wizard", "hood") else 0.15)
    _front_legs_and_body(c, kit, cx, body_top, bw, robe)

    c.paint(head.mask, kit.skin)
    if headwear in ("hair", "wizard", "crown"):
        _hair(c, head, kit.hair)
    if headwear == "helmet":
        _helmet(c, head, kit)
    elif headwear == "hood":
        face = ellipse(head.cy + 0.9, cx, head.ry * 0.7, np.maximum(head.rx * 0.72, head.eye_x + 1.2))
        c.paint_toned(ellipse(head.cy - 0.3, cx, head.ry + 0.6, head.rx + 0.5) & ~face, kit.cloth)
    elif headwear == "wizard":
        _wizard_hat(c, head, kit)
    elif headwear == "crown":
        _crown(c, head, kit)
    eyes = (np.abs(head.ax - head.eye_x) < 0.5) & (Y >= head.eye_row) & (Y <= head.eye_row + c.chance(0.6))
    c.paint(eyes, OUTLINE)
    if headwear == "wizard":
        beard = ellipse(head.cy + head.ry * 0.9, cx, 1.8, head.rx * 0.55) & c.chance(0.5)
        c.paint(beard, kit.hair[0])
    _hero_gear(c, kit, cx, bw)


def _front_legs_and_body(c, kit, cx, body_top, bw, robe):
    """Legs and boots, tunic (or a robe down to the boots), belt, sleeves and hands."""
    ax = np.abs(X - cx)
    legs = box(12.5, 14.4, c.snap(c.uniform(0.6, 1.2), cx), bw, x=ax)
    c.paint(legs, kit.cloth[1])
    c.paint(legs & (Y > 13.5), kit.leather)
    flare = c.uniform(0.2, 0.5) * robe
    torso = box(body_top, 12.4 + robe * 1.2, 0, bw + flare * (Y - body_top), x=ax)
    c.paint_toned(torso, kit.cloth)
    belt = (np.abs(Y - c.uniform(11.0, 12.2)) < 0.5) & torso & c.chance(0.6)
    c.paint(belt, kit.leather)
    c.paint(belt & (ax < 0.6), kit.metal[0])
    arms = box(body_top, 12.4, bw + 0.6, bw + 1.4, x=ax)
    c.paint(arms, kit.cloth[0])
    c.paint(arms & (Y > 11.5), kit.skin)


def _hair(c, head, tone):
    # Keep a row of forehead above the eyes and the sideburns outside them, so
    # the hair's shaded rim never swallows the face.
    hairline = np.minimum(head.cy - head.ry * c.uniform(0.0, 0.45), head.eye_row - 1.0)
    sideburn = (head.ax > np.maximum(head.rx - c.uniform(0.8, 1.6), head.eye_x + 0.6)) & (
        Y < head.cy + c.uniform(0.0, 1.5))
    volume = ellipse(head.cy - 0.5, head.cx, head.ry + 0.5, head.rx + 0.4) & (Y < head.eye_row - 1.0)
    c.paint_toned((head.mask & ((Y < hairline) | sideburn)) | (volume & c.chance(0.5)), tone)


def _helmet(c, head, kit):
    horns = capsule(head.cy - 1.0, head.rx - 0.3, head.top - 0.6, head.rx + 1.6, 0.9, 0.35, x=head.ax)
    c.paint(horns & c.chance(0.4), kit.accent[0])
    c.paint_toned(ellipse(head.cy - 0.2, head.cx, head.ry + 0.4, head.rx + 0.3), kit.metal)
    window = box(head.eye_row - 1, head.eye_row + c.uniform(1.0, 2.0), 0,
                  head.eye_x + c.uniform(0.6, 1.6), x=head.ax) & head.mask
    c.paint(window, kit.skin)


def _wizard_hat(c, head, kit):
    brim_y = head.top + 1.0
    brim = ellipse(brim_y, head.cx, 0.8, head.rx + c.uniform(0.8, 1.8))
    tip_x = head.cx + c.uniform(-0.6, 0.6)
    cone = polygon([(c.uniform(0.0, 0.6), tip_x), (brim_y, head.cx + c.uniform(2.2, 3.2)),
                     (brim_y, head.cx - c.uniform(2.2, 3.2))])
    c.paint_toned(brim | cone, kit.cloth)
    c.paint(cone & (Y > brim_y - 1.6) & c.chance(0.7), kit.accent[0])


def _crown(c, head, kit):
    half = c.snap(head.rx * c.uniform(0.45, 0.7), head.cx)
    band = box(head.top, head.top + 1.2, 0, half, x=head.ax)
    points = box(head.top - 1.4, head.top, 0, half, x=head.ax) & (
        (head.ax < 0.6) | (np.abs(head.ax - half) < 0.5))
    c.paint_toned(band | points, kit.metal)
    c.paint(band & (head.ax < 0.6) & (Y >= head.top + 0.5), kit.accent[0])


def _hero_gear(c, kit, cx, bw):
    """A weapon on one side and maybe a shield on the other: the only asymmetry."""
    side = c.sign()
    sx = (X - cx) * side  # positive towards the weapon hand
    hand = bw + 2.0
    kind = c.rng.choice(4, (c.n, 1, 1), p=[0.4, 0.25, 0.2, 0.15])  # none, sword, staff, axe
    grip = box(11.0, 13.2, hand - 0.5, hand + 0.5, x=sx)
    blade = box(c.uniform(4.0, 6.5), 10.5, hand - 0.5, hand + 0.5, x=sx)
    guard = box(10.5, 11.4, hand - 1.5, hand + 1.5, x=sx)
    c.paint_outlined((blade | guard | grip) & (kind == 1), kit.metal[0])
    c.paint(grip & (kind == 1), kit.leather)
    shaft = box(c.uniform(2.5, 4.0), 14.4, hand - 0.5, hand + 0.5, x=sx) & (kind == 2)
    c.paint_outlined(shaft, kit.leather)
    c.paint_outlined(ellipse(3.0, hand, 1.3, 1.3, x=sx) & (kind == 2), kit.accent[0])
    handle = box(6.0, 13.6, hand - 0.5, hand + 0.5, x=sx) & (kind == 3)
    c.paint_outlined(handle, kit.leather)
    axe_head = polygon([(5.0, hand + 0.5), (8.5, hand + 0.5), (9.5, hand + 2.6), (4.0, hand + 2.6)], x=sx)
    c.paint_outlined(axe_head & (kind == 3), kit.metal[0])
    shield_y, shield_x = c.uniform(10.5, 11.5), -(bw + 1.8)
    shield = ellipse(shield_y, shield_x, c.uniform(2.2, 2.8), c.uniform(1.6, 2.2), x=sx) & c.chance(0.3)
    c.paint_toned(shield, kit.accent)
    c.paint(shield & ellipse(shield_y, shield_x, 0.8, 0.6, x=sx), kit.metal[0])


# (draw function, relative weight): how often each variant of the class is drawn.
VARIANTS = (
    (lambda c: _hero(c, "hair"), 3), (lambda c: _hero(c, "helmet"), 2), (lambda c: _hero(c, "hood"), 1),
    (lambda c: _hero(c, "wizard"), 1), (lambda c: _hero(c, "crown"), 1),
)
