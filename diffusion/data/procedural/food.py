"""Class 'food': fruit, banana, carrot, cheese, bread, drumstick, mushroom, cherries."""

import numpy as np

from diffusion.data.procedural.palettes import BONE, WOOD, darker, lighter
from diffusion.data.procedural.shapes import X, Y, box, capsule, ellipse, polygon, rotated_ellipse


def _fruit(c):
    """Apple, orange or plum: shaded round body, stem, usually a leaf."""
    cx = c.uniform(7.0, 8.0)
    cy = c.uniform(8.5, 9.5)
    rx, ry = c.uniform(4.0, 5.6), c.uniform(3.8, 5.0)
    notch = c.chance(0.5)
    body = ellipse(cy, cx, ry, rx) & ~(ellipse(cy - ry - 0.4, cx, 1.2, 1.2) & notch)
    rgb = c.hsv((-0.05, 0.35), (0.65, 0.95), (0.7, 0.95))
    c.paint_shaded(body, rgb)
    c.paint(body & ~ellipse(cy - 0.8, cx - 0.8, ry, rx), c.add(darker(rgb, 0.35)))
    c.paint(ellipse(cy - ry * 0.45, cx - rx * 0.45, 1.0, 0.7), c.add(lighter(rgb, 0.75)))
    top = cy - ry
    lean = c.uniform(-1.5, 1.5)
    c.paint_outlined(capsule(top + 0.8, cx, top - 2.2, cx + lean, 0.55), c.add(c.pick(WOOD)))
    side = c.sign()
    leaf = rotated_ellipse(top - 1.0, cx + side * 2.0, 0.9, 1.8, side * c.uniform(0.2, 0.6)) & c.chance(0.8)
    c.paint_outlined(leaf, c.add(c.hsv((0.25, 0.38), (0.6, 0.9), (0.55, 0.8))))


def _banana(c):
    """Crescent banana at any angle, with brown tips."""
    cy, cx = c.uniform(7.0, 8.5), c.uniform(7.0, 8.5)
    r = c.uniform(5.5, 6.5)
    angle = c.uniform(0, 2 * np.pi)
    bite = c.uniform(2.0, 3.0)
    outer = ellipse(cy, cx, r, r)
    inner = ellipse(cy - bite * np.sin(angle), cx - bite * np.cos(angle), r * 1.05, r * 1.05)
    banana = outer & ~inner
    rgb = c.hsv((0.11, 0.16), (0.7, 0.9), (0.9, 1.0))
    c.paint_shaded(banana, rgb)
    # The crescent's tips lie farthest from its bulge; colour them brown.
    mid_y, mid_x = cy + r * np.sin(angle), cx + r * np.cos(angle)
    tips = banana & ((Y - mid_y) ** 2 + (X - mid_x) ** 2 > (r * 1.25) ** 2)
    c.paint(tips, c.add(c.pick(WOOD)))


def _carrot(c):
    """Tapering carrot lying diagonally, ridged, with a green leafy top."""
    side = c.sign()
    y0, y1 = c.uniform(3.5, 5.0), c.uniform(12.5, 14.2)
    x0 = 7.5 + side * c.uniform(2.0, 3.5)
    x1 = 7.5 - side * c.uniform(2.0, 4.5)
    root = capsule(y0, x0, y1, x1, c.uniform(2.0, 2.8), 0.5)
    rgb = c.hsv((0.04, 0.1), (0.75, 0.95), (0.85, 1.0))
    c.paint_shaded(root, rgb)
    t = ((Y - y0) * (y1 - y0) + (X - x0) * (x1 - x0)) / ((y1 - y0) ** 2 + (x1 - x0) ** 2)
    ridges = root & (np.abs((t * c.uniform(4.0, 6.0)) % 1.0 - 0.5) < 0.08) & (t > 0.15)
    c.paint(ridges, c.add(darker(rgb, 0.35)))
    green = c.add(c.hsv((0.25, 0.38), (0.6, 0.9), (0.5, 0.8)))
    for turn in (-0.7, 0.0, 0.7):
        direction = np.arctan2(y0 - y1, x0 - x1) + turn
        length = c.uniform(2.5, 3.5)
        leaf = capsule(y0, x0, y0 + length * np.sin(direction), x0 + length * np.cos(direction), 0.8, 0.4)
        c.paint(leaf, green)


def _cheese(c):
    """Cheese wedge: front face with holes, lighter sloping top."""
    flip = c.sign()
    base, top = c.uniform(11.5, 13.0), c.uniform(3.0, 5.5)
    left, right = c.uniform(1.5, 3.0), c.uniform(12.0, 13.5)
    peak_x = 7.5 + flip * (right - 7.5)
    far_x = 7.5 - flip * (7.5 - left)
    face = polygon([(base, left), (base, right), (top + 2.5, right), (top + 2.5, left)])
    # The sloping top face, seen from slightly above: two triangles meeting at the peak.
    slope = polygon([(top + 2.5, far_x), (top, peak_x), (top + 2.5, peak_x)])
    wedge = polygon([(top + 2.6, left), (top + 2.6, right), (top, peak_x)])
    rgb = c.hsv((0.12, 0.16), (0.55, 0.85), (0.9, 1.0))
    c.paint_shaded(face, rgb, 0.2)
    c.paint(wedge | slope, c.add(lighter(rgb, 0.4)))
    c.paint(face & (Y > base - 0.9), c.add(darker(rgb, 0.25)))
    holes = np.zeros(c.ink.shape, bool)
    for _ in range(3):
        hole = ellipse(c.uniform(top + 3.5, base - 1.0), c.uniform(left + 1.5, right - 1.5),
                        c.uniform(0.5, 1.1), c.uniform(0.5, 1.2))
        holes |= hole & c.chance(0.75)
    c.paint(holes & face, c.add(darker(rgb, 0.3)))


def _bread(c):
    """Loaf of bread with a darker base and baked slashes across the top."""
    cy, cx = c.uniform(8.5, 9.5), c.uniform(7.0, 8.0)
    ry, rx = c.uniform(3.0, 4.5), c.uniform(5.0, 6.5)
    power = c.uniform(2.5, 4.0)
    loaf = (np.abs((Y - cy) / ry) ** power + np.abs((X - cx) / rx) ** power) <= 1.0
    crust = c.hsv((0.06, 0.1), (0.5, 0.8), (0.65, 0.9))
    c.paint_shaded(loaf, crust)
    c.paint(loaf & (Y > cy + ry * 0.4), c.add(darker(crust, 0.25)))
    slash = c.uniform(1.2, 2.2)
    diagonal = np.abs(((X - cx - (Y - cy) * 0.8) / slash) % 2.0 - 1.0) < 0.25
    cuts = loaf & diagonal & (np.abs(Y - cy + ry * 0.3) < 1.0)
    c.paint(cuts, c.add(lighter(crust, 0.45)))


def _drumstick(c):
    """Roast drumstick: shaded meat with the bone and its knobbly end sticking out."""
    side = c.sign()
    cy = c.uniform(5.5, 7.0)
    cx = 7.5 - side * c.uniform(1.0, 2.0)
    angle = side * c.uniform(0.5, 0.9)
    bone_end_y, bone_end_x = cy + c.uniform(5.0, 6.5), cx + side * c.uniform(4.5, 5.5)
    bone_rgb = c.add(c.pick(BONE))
    bone = capsule(cy, cx, bone_end_y, bone_end_x, 0.7)
    knob = (ellipse(bone_end_y + 0.8, bone_end_x - side * 0.6, 1.0, 1.0)
            | ellipse(bone_end_y - 0.6, bone_end_x + side * 0.8, 1.0, 1.0))
    c.paint(bone | knob, bone_rgb)
    meat = rotated_ellipse(cy, cx, c.uniform(3.0, 3.8), c.uniform(4.5, 5.4), angle)
    rgb = c.hsv((0.03, 0.09), (0.6, 0.85), (0.55, 0.85))
    c.paint_outlined(meat, c.add(rgb))
    c.paint(meat & ~ellipse(cy - 0.9, cx - 0.6, 3.2, 4.4), c.add(darker(rgb, 0.3)))
    c.paint(ellipse(cy - 1.3, cx - 1.2, 0.7, 1.1) & meat, c.add(lighter(rgb, 0.55)))


def _mushroom(c):
    """Toadstool: domed cap, usually spotted, on a pale stem."""
    cx = c.centre()
    ax = np.abs(X - cx)
    cap_y = c.uniform(6.5, 8.0)
    cap = ellipse(cap_y, cx, c.uniform(4.5, 6.0), c.uniform(5.0, 6.6)) & (Y <= cap_y)
    stem = box(cap_y, c.uniform(12.8, 14.2), 0, c.snap(c.uniform(1.2, 2.3), cx), x=ax)
    c.paint_shaded(stem, c.pick(BONE), 0.2)
    rgb = c.hsv((-0.05, 0.12), (0.55, 0.9), (0.55, 0.9))
    c.paint_shaded(cap, rgb, outlined=True)
    spots = (ellipse(cap_y - 2.5, 0.0, 1.1, 1.1, x=ax) | ellipse(cap_y - 1.0, c.uniform(3.0, 4.0), 0.9, 0.9, x=ax))
    c.paint(spots & cap & c.chance(0.7), c.add(c.pick([(250, 250, 245)], 5)))


def _cherries(c):
    """Pair of cherries hanging from joined stems, with a leaf."""
    cx = c.uniform(7.0, 8.0)
    spread = c.uniform(2.5, 3.5)
    low = c.uniform(10.0, 11.0)
    r = c.uniform(2.2, 2.8)
    rgb = c.hsv((-0.04, 0.02), (0.75, 0.95), (0.65, 0.9))
    stem_rgb = c.add(c.hsv((0.22, 0.32), (0.5, 0.8), (0.4, 0.6)))
    knot_y, knot_x = c.uniform(2.0, 3.5), cx + c.uniform(-0.5, 1.5)
    for dx, dy in ((-spread, 0.0), (spread, -1.0)):
        c.paint(capsule(low + dy - r, cx + dx, knot_y, knot_x, 0.5), stem_rgb)
    leaf = rotated_ellipse(knot_y + 0.5, knot_x + 2.0, 0.9, 1.9, c.uniform(-0.3, 0.5))
    c.paint_outlined(leaf, c.add(c.hsv((0.25, 0.38), (0.6, 0.9), (0.55, 0.8))))
    for dx, dy in ((-spread, 0.0), (spread, -1.0)):
        cherry = ellipse(low + dy, cx + dx, r, r)
        c.paint_shaded(cherry, rgb, outlined=True)
        c.paint(ellipse(low + dy - 1.0, cx + dx - 1.0, 0.6, 0.6), c.add(lighter(rgb, 0.7)))


# (draw function, relative weight): how often each variant of the class is drawn.
VARIANTS = (
    (_fruit, 2), (_banana, 1), (_carrot, 1), (_cheese, 1), (_bread, 1), (_drumstick, 1), (_mushroom, 1),
    (_cherries, 1),
)
