"""Class 'non-hero': slimes, ghosts, bats, skulls, bugs and floating eyeballs."""

import numpy as np

from diffusion.data.procedural.canvas import OUTLINE
from diffusion.data.procedural.palettes import BONE, darker, lighter
from diffusion.data.procedural.shapes import X, Y, box, capsule, ellipse, polygon


def _slime(c):
    """Dome of goo with a flat base, dark eyes, maybe a mouth and a shine."""
    cx = c.centre()
    ax = np.abs(X - cx)
    top, base = c.uniform(3.0, 7.0), c.uniform(13.2, 14.4)
    ry = (base - top) * c.uniform(1.05, 1.4)
    rx = c.uniform(4.5, 6.6)
    body = ellipse(top + ry, cx, ry, rx) & (Y <= base)
    rgb = c.hsv((0, 1), (0.5, 0.9), (0.6, 0.95))
    goo = c.tone(rgb)
    c.paint_toned(body, goo)
    c.paint(body & (Y > base - 1.0), goo[1])
    eye_y = top + (base - top) * c.uniform(0.35, 0.5)
    ex = c.snap(c.uniform(1.0, 2.6), cx)
    c.paint((np.abs(ax - ex) < 0.5) & (Y >= np.round(eye_y)) & (Y <= np.round(eye_y) + 1), OUTLINE)
    whites = (np.abs(ax - ex) < 0.5) & (np.abs(Y - np.round(eye_y) + 1) < 0.5) & c.chance(0.5)
    c.paint(whites, c.add(c.pick([(255, 255, 255)], 4)))
    mouth = (ax < c.uniform(0.4, 1.6)) & (np.abs(Y - np.round(eye_y) - 3) < 0.5) & c.chance(0.6)
    c.paint(mouth, OUTLINE)
    c.paint(ellipse(top + 1.5, cx - rx * 0.5, 0.8, 0.7), c.add(lighter(rgb, 0.7)))


def _ghost(c):
    """Pale sheet ghost: round head, wavy hem, hollow eyes, maybe arms and an O mouth."""
    cx = c.centre()
    ax = np.abs(X - cx)
    rx = c.uniform(4.0, 5.6)
    top = c.uniform(1.5, 3.5)
    base = c.uniform(12.5, 14.0)
    period = c.uniform(1.8, 3.2)
    waves = base - c.uniform(0.8, 1.8) * (0.5 + 0.5 * np.cos(2 * np.pi * ax / period))
    body = (ellipse(top + rx, cx, rx, rx) | box(top + rx, 14.5, 0, rx, x=ax)) & (Y <= waves)
    arms = ellipse(top + rx + c.uniform(0.5, 2.5), rx + 0.4, 1.0, 1.5, x=ax) & c.chance(0.5)
    rgb = c.hsv((0, 1), (0.0, 0.3), (0.92, 1.0))
    c.paint_shaded(body | arms, rgb, 0.18)
    eye_y = top + rx * c.uniform(0.7, 1.1)
    ex = c.snap(c.uniform(1.0, 2.5), cx)
    eye_rows = (Y >= np.round(eye_y)) & (Y <= np.round(eye_y) + 1)
    eyes = (np.abs(ax - ex) < c.uniform(0.5, 1.0)) & (ax > 0.6) & eye_rows
    c.paint(eyes, OUTLINE)
    mouth = ellipse(eye_y + c.uniform(2.5, 3.2), cx, c.uniform(0.5, 1.3), c.uniform(0.5, 1.3)) & c.chance(0.6)
    c.paint(mouth, OUTLINE)


def _bat(c):
    """Bat with raised, scalloped wings, pointed ears, glowing eyes and fangs."""
    cx = c.centre()
    ax = np.abs(X - cx)
    cy = c.uniform(8.0, 9.5)
    tip_y, tip_x = cy - c.uniform(4.5, 6.0), c.uniform(5.8, 6.6)
    outer_y, inner_y = tip_y + c.uniform(2.5, 4.0), cy + c.uniform(1.5, 2.5)
    wing = polygon([(cy - 1.0, 1.0), (tip_y, tip_x), (outer_y, tip_x), (inner_y, 1.0)], x=ax)
    # Bites out of the trailing edge give the wing its membrane scallops.
    for k in (0.33, 0.72):
        bite_y, bite_x = outer_y + (inner_y - outer_y) * k, tip_x + (1.0 - tip_x) * k
        wing &= ~ellipse(bite_y + 1.0, bite_x, 1.3, 1.1, x=ax)
    rgb = c.hsv((0.6, 1.1), (0.25, 0.6), (0.45, 0.8))
    c.paint_shaded(wing, darker(rgb, 0.15))
    body = ellipse(cy, cx, c.uniform(2.2, 2.8), c.uniform(1.7, 2.4))
    ears = polygon([(cy - c.uniform(4.0, 5.0), c.uniform(1.2, 1.8)), (cy - 1.0, 0.2), (cy - 1.0, 2.0)], x=ax)
    c.paint_shaded(body | ears, rgb)
    eyes = (np.abs(ax - c.snap(c.uniform(1.2, 1.8), cx)) < 0.5) & (np.abs(Y - np.round(cy - 0.5)) < 0.5)
    c.paint(eyes, c.add(c.hsv((-0.05, 0.15), (0.8, 1), (0.9, 1))))
    fangs = (np.abs(ax - c.snap(0.6, cx)) < 0.5) & (np.abs(Y - np.round(cy + 1.5)) < 0.5) & c.chance(0.6)
    c.paint(fangs, c.add(c.pick([(255, 255, 255)], 3)))


def _skull(c):
    """Skull with dark sockets (sometimes glowing), nose hole, teeth, maybe horns."""
    cx = c.centre()
    ax = np.abs(X - cx)
    cy = c.uniform(5.5, 7.0)
    rx = c.uniform(4.3, 5.4)
    cranium = ellipse(cy, cx, c.uniform(4.0, 4.8), rx)
    jaw = box(cy + 2.0, cy + c.uniform(5.5, 7.0), 0, rx * c.uniform(0.55, 0.7), x=ax)
    horns = capsule(cy - 1.5, rx - 1.0, cy - 5.0, rx + 1.2, 1.1, 0.3, x=ax) & c.chance(0.35)
    c.paint(horns, c.add(c.hsv((0, 0.1), (0.6, 0.9), (0.5, 0.8))))
    bone = c.pick(BONE)
    c.paint_shaded(cranium | jaw, bone, 0.25)
    sockets = ellipse(cy + 1.0, c.uniform(1.6, 2.4), c.uniform(1.0, 1.6), c.uniform(0.9, 1.4), x=ax)
    c.paint(sockets, OUTLINE)
    glow = sockets & ellipse(cy + 1.0, 1.8, 0.5, 0.5, x=ax) & c.chance(0.4)
    c.paint(glow, c.add(c.hsv((0, 1), (0.8, 1), (0.9, 1))))
    c.paint((ax < 0.6) & (np.abs(Y - np.round(cy + 3.0)) < 0.5), OUTLINE)
    teeth = jaw & (Y > cy + 4.2) & (Y < cy + 5.6) & ((np.floor(ax + 0.5 + cx % 1) % 2) == 1)
    c.paint(teeth, c.add(darker(bone, 0.45)))


def _bug(c):
    """Beetle or spider from above: shell, small head, thin bent legs, antennae."""
    cx = c.centre()
    ax = np.abs(X - cx)
    cy = c.uniform(8.5, 10.0)
    ry, rx = c.uniform(3.0, 4.0), c.uniform(2.6, 3.4)
    shell = ellipse(cy, cx, ry, rx)
    head_y = cy - ry - c.uniform(0.3, 1.0)
    head = ellipse(head_y, cx, c.uniform(1.3, 1.9), c.uniform(1.6, 2.4))
    rgb = c.hsv((0, 1), (0.55, 0.95), (0.5, 0.9))
    reach = c.uniform(5.5, 6.8)
    legs = np.zeros(c.ink.shape, bool)
    for hip_y, knee_dy, foot_dy in ((cy - 1.5, -1.5, -2.5), (cy, -0.5, 0.5), (cy + 1.5, 0.5, 3.0)):
        knee_y, knee_x = hip_y + knee_dy, reach - 1.2
        legs |= capsule(hip_y, 1.0, knee_y, knee_x, 0.55, x=ax)
        legs |= capsule(knee_y, knee_x, hip_y + foot_dy, reach, 0.55, x=ax)
    c.paint_bare(legs, OUTLINE)
    antennae = capsule(head_y - 1.0, 0.8, head_y - c.uniform(2.5, 3.5), c.uniform(2.0, 3.5), 0.45, x=ax)
    c.paint_bare(antennae & c.chance(0.7), OUTLINE)
    c.paint_shaded(shell, rgb)
    c.paint(shell & (ax < 0.6) & (Y > cy - ry + 1) & c.chance(0.6), OUTLINE)
    spots = ellipse(cy + c.uniform(-1.0, 1.5), c.uniform(1.3, 2.0), 0.8, 0.7, x=ax) & shell & c.chance(0.6)
    c.paint(spots, c.add(darker(rgb, 0.55)))
    c.paint(ellipse(cy - ry * 0.5, cx - rx * 0.45, 0.8, 0.6) & shell, c.add(lighter(rgb, 0.6)))
    c.paint_shaded(head, darker(rgb, 0.25), outlined=True)
    eyes = (np.abs(ax - c.snap(c.uniform(0.6, 1.5), cx)) < 0.5) & (np.abs(Y - np.round(head_y)) < 0.5)
    c.paint(eyes, c.add(c.pick([(255, 255, 255), (255, 230, 80), (255, 60, 60)], 5)))


def _eyeball(c):
    """Floating one-eyed blob trailing tentacles."""
    cx = c.centre()
    ax = np.abs(X - cx)
    cy = c.uniform(6.0, 7.5)
    r = c.uniform(4.0, 5.2)
    rgb = c.hsv((0, 1), (0.4, 0.8), (0.5, 0.85))
    tentacle_rgb = c.add(darker(rgb, 0.2))
    for k, x0 in enumerate((0.0, 2.5, 4.5)):
        tip_x = x0 + c.uniform(-0.5, 1.5) * (k > 0)
        tentacle = capsule(cy + r - 1.0, x0, c.uniform(12.8, 14.2), tip_x, 0.9, 0.5, x=ax)
        c.paint(tentacle & c.chance(0.8), tentacle_rgb)
    body = ellipse(cy, cx, r, r * c.uniform(0.95, 1.15))
    c.paint_shaded(body, rgb)
    sclera = ellipse(cy + 0.3, cx, r * 0.6, r * c.uniform(0.6, 0.75))
    c.paint(sclera, c.add(c.pick([(250, 250, 250), (245, 240, 200)], 5)))
    c.paint(ellipse(cy + 0.3, cx, 1.6, 1.3), c.add(c.hsv((0, 1), (0.7, 1), (0.6, 1))))
    c.paint(ellipse(cy + 0.3, cx, 0.7, 0.6), OUTLINE)
    brow = box(cy - r * 0.75, cy - r * 0.45, 0, r * 0.7, x=ax) & body & c.chance(0.5)
    c.paint(brow, c.add(darker(rgb, 0.45)))


# (draw function, relative weight): how often each variant of the class is drawn.
VARIANTS = ((_slime, 2), (_ghost, 1), (_bat, 1), (_skull, 1), (_bug, 1), (_eyeball, 1))
