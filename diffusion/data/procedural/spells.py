"""Class 'spell': fireballs, orbs, lightning, stars, potions, crystals and scrolls."""

import numpy as np

from diffusion.data.procedural.canvas import OUTLINE
from diffusion.data.procedural.palettes import METAL, WOOD, darker, hsv, lighter
from diffusion.data.procedural.shapes import X, Y, box, capsule, ellipse, neighbour, polygon, star


def _spell_colours(c):
    """Saturated outer/middle/core colours from one elemental hue."""
    hue = c.pick([(0.0, 0, 0), (0.55, 0, 0), (0.3, 0, 0), (0.78, 0, 0), (0.9, 0, 0)], 0)[:, 0]
    hue = hue + c.rng.uniform(-0.04, 0.04, c.n)
    outer = hsv(hue, np.full(c.n, 0.9), np.full(c.n, 0.9))
    middle = hsv(hue + 0.07, np.full(c.n, 0.75), np.full(c.n, 1.0))
    core = hsv(hue + 0.12, np.full(c.n, 0.25), np.full(c.n, 1.0))
    return outer, middle, core


def _fireball(c):
    """Comet of magic fire: round head, tapering tail, hot core, stray sparks."""
    outer, middle, core = _spell_colours(c)
    angle = c.uniform(0, 2 * np.pi)
    dy, dx = np.sin(angle), np.cos(angle)
    r = c.uniform(2.8, 3.6)
    length = c.uniform(6.0, 8.0)
    hy, hx = 7.5 + 2.6 * dy, 7.5 + 2.6 * dx
    for scale, rgb in ((1.0, outer), (0.62, middle), (0.3, core)):
        head = ellipse(hy, hx, r * scale + 0.2, r * scale + 0.2)
        tail = capsule(hy, hx, hy - length * scale * dy, hx - length * scale * dx, r * scale, 0.3)
        c.paint(head | tail, c.add(rgb))
    sparks = np.zeros(c.ink.shape, bool)
    for side in (-1, 1):
        back = c.uniform(3.0, 6.0)
        off = side * c.uniform(2.5, 3.5)
        sy, sx = np.round(hy - back * dy + off * dx), np.round(hx - back * dx - off * dy)
        sparks |= (np.abs(Y - sy) < 0.5) & (np.abs(X - sx) < 0.5) & c.chance(0.7)
    c.paint_bare(sparks & (c.ink == 0), c.add(darker(outer, 0.1)))


def _orb(c):
    """Glowing crystal ball, on a stand or floating among sparkles."""
    outer, middle, core = _spell_colours(c)
    cx = c.centre()
    ax = np.abs(X - cx)
    cy = c.uniform(6.0, 7.5)
    r = c.uniform(3.2, 4.4)
    stand = c.chance(0.6)
    base = polygon([(cy + r - 0.5, 2.0), (13.6, 3.5), (13.6, 0.0), (cy + r - 0.5, 0.0)], x=ax) & stand
    c.paint_shaded(base, c.pick(METAL[2:] + WOOD[:1]))
    orb = ellipse(cy, cx, r, r)
    c.paint_outlined(orb, c.add(outer))
    c.paint(ellipse(cy + 0.5, cx + 0.3, r * 0.7, r * 0.7), c.add(middle))
    c.paint(ellipse(cy - r * 0.4, cx - r * 0.4, 1.0, 0.8), c.add(core))
    sparkle = c.add(lighter(middle, 0.5))
    for sy, sx in ((2.0, 13.0), (12.0, 2.0), (1.5, 2.5)):
        sparkle_mask = (((np.abs(Y - sy) < 0.5) & (np.abs(X - sx) < 1.5))
                        | ((np.abs(X - sx) < 0.5) & (np.abs(Y - sy) < 1.5)))
        c.paint(sparkle_mask & c.chance(0.5) & ~stand, sparkle)


def _lightning(c):
    """Zig-zag lightning bolt with a bright core."""
    outer, middle, core = _spell_colours(c)
    lean = c.sign() * c.uniform(0.0, 1.5)
    w = c.uniform(1.6, 2.4)
    upper = polygon([(1.0, 8.5 + lean + w), (8.5, 5.0 + w), (8.5, 5.0 - w * 0.6), (1.0, 8.5 + lean - w * 0.3)])
    bar = box(6.8, 8.6, 5.0 - w * 0.6, 10.0 + w * 0.6)
    lower = polygon([(6.8, 10.0 + w * 0.6), (14.5, 6.5 - lean), (6.8, 10.0 - w)])
    bolt = upper | bar | lower
    yellow = hsv(c.rng.uniform(0.12, 0.16, c.n), np.full(c.n, 0.8), np.full(c.n, 1.0))
    bolt_rgb = np.where(c.chance(0.5)[:, 0], yellow, middle)
    c.paint_shaded(bolt, bolt_rgb, 0.2)
    c.paint(bolt & neighbour(bolt, 0, 1) & neighbour(bolt, 0, -1) & neighbour(bolt, -1, 0)
            & neighbour(bolt, 1, 0) & c.chance(0.6), c.add(core))


def _star_spell(c):
    """Four-, five- or six-pointed star with a glowing centre."""
    outer, middle, core = _spell_colours(c)
    gold = c.chance(0.5)
    rgb = np.where(gold[:, 0], c.hsv((0.12, 0.15), (0.75, 0.95), (0.95, 1.0)), middle)
    points = c.rng.choice([4, 5, 6], (c.n, 1, 1))
    cy, cx = c.uniform(7.0, 8.5), c.uniform(7.0, 8.0)
    r_out = c.uniform(5.5, 7.0)
    shape = star(cy, cx, r_out, r_out * c.uniform(0.3, 0.45), points, c.uniform(0.0, 0.1))
    c.paint_shaded(shape, rgb, 0.25)
    c.paint(star(cy, cx, r_out * 0.45, r_out * 0.2, points, 0.0) & shape, c.add(lighter(rgb, 0.6)))
    c.paint(ellipse(cy, cx, 1.0, 1.0) & c.chance(0.4), OUTLINE)


def _potion(c):
    """Round potion flask: coloured liquid, glassy shine, cork."""
    cx = c.centre()
    ax = np.abs(X - cx)
    cy = c.uniform(9.5, 10.5)
    r = c.uniform(3.6, 4.6)
    neck_w = c.snap(c.uniform(0.8, 1.6), cx)
    neck_top = c.uniform(2.5, 4.0)
    flask = ellipse(cy, cx, r, r * c.uniform(0.95, 1.15)) | box(neck_top + 1.5, cy - r + 1, 0, neck_w, x=ax)
    glass = c.add(c.hsv((0.45, 0.65), (0.03, 0.15), (0.9, 1.0)))
    c.paint(flask, glass)
    outer, middle, core = _spell_colours(c)
    liquid = flask & (Y > cy - r * c.uniform(0.0, 0.5)) & ellipse(cy, cx, r - 0.8, r)
    c.paint_shaded(liquid, middle, 0.3)
    bubble = (np.abs(Y - (cy + 0.5)) < 0.5) & (np.abs(X - cx - 1.5) < 0.5)
    c.paint(liquid & bubble & c.chance(0.6), c.add(core))
    c.paint(ellipse(cy - r * 0.5, cx - r * 0.5, 1.0, 0.6) & flask, c.add(c.pick([(255, 255, 255)], 2)))
    cork = box(neck_top, neck_top + 1.5, 0, neck_w + 0.5, x=ax)
    c.paint_outlined(cork, c.add(c.pick(WOOD)))


def _crystal(c):
    """Faceted gem standing upright: light left facets, dark right ones."""
    cx = c.centre()
    ax = np.abs(X - cx)
    top, bottom = c.uniform(1.0, 2.5), c.uniform(13.0, 14.5)
    shoulder, hip = top + c.uniform(2.0, 4.0), bottom - c.uniform(2.5, 5.0)
    half = c.uniform(3.5, 5.5)
    gem = polygon([(top, 0.0), (shoulder, half), (hip, half), (bottom, 0.0)], x=ax)
    outer, middle, core = _spell_colours(c)
    c.paint(gem, c.add(middle))
    c.paint(gem & (X > cx), c.add(outer))
    c.paint(gem & (X < cx) & (ax > half * 0.45), c.add(lighter(middle, 0.45)))
    c.paint(gem & (Y < shoulder) & (X < cx) & (X > cx - half * 0.5), c.add(core))


def _scroll(c):
    """Spell scroll: parchment with coloured runes between two rolls, maybe a seal."""
    cx = c.centre()
    ax = np.abs(X - cx)
    top, bottom = c.uniform(1.5, 3.0), c.uniform(12.5, 14.0)
    half = c.snap(c.uniform(3.2, 4.6), cx)
    paper_rgb = c.hsv((0.1, 0.15), (0.15, 0.4), (0.9, 1.0))
    paper = box(top + 1, bottom - 1, 0, half, x=ax)
    c.paint_shaded(paper, paper_rgb, 0.15)
    runes = paper & (np.round(Y - top) % 2 == 1) & (Y > top + 2) & (Y < bottom - 2) & (ax < half - 1)
    runes &= (np.sin(X * 2.7 + c.uniform(0, 6)) + np.sin(Y * 1.3) > -0.3)
    outer, middle, core = _spell_colours(c)
    c.paint(runes, c.add(darker(outer, 0.3)))
    rolls = ellipse(top + 0.5, cx, 1.0, half + 1.0) | ellipse(bottom - 0.5, cx, 1.0, half + 1.0)
    c.paint_outlined(rolls, c.add(darker(paper_rgb, 0.2)))
    seal = ellipse(bottom - 2.5, cx, 1.0, 1.0) & c.chance(0.5)
    c.paint_outlined(seal, c.add(outer))


# (draw function, relative weight): how often each variant of the class is drawn.
VARIANTS = (
    (_fireball, 1), (_orb, 1), (_lightning, 1), (_star_spell, 1), (_potion, 1), (_crystal, 1), (_scroll, 1),
)
