"""Class 'side-facing': walkers in profile, four-legged critters and birds, facing either way."""

import numpy as np

from diffusion.data.procedural.canvas import OUTLINE
from diffusion.data.procedural.heroes import Outfit
from diffusion.data.procedural.palettes import darker, lighter
from diffusion.data.procedural.shapes import X, Y, box, capsule, ellipse, polygon, rotated_ellipse


def _walker(c, headwear):
    """Humanoid in profile facing right, mid-stride; mirrored for half of them."""
    head_cy, head_r = c.uniform(4.6, 5.4), c.uniform(3.0, 3.6)
    head_cx = c.uniform(7.6, 8.6)
    bx = head_cx - c.uniform(0.5, 1.2)  # torso axis
    kit = Outfit(c)
    cape = polygon([(8.8, bx - 0.5), (8.8, bx - 2.0), (13.5, bx - c.uniform(3.0, 4.0)), (13.5, bx)])
    c.paint_toned(cape & c.chance(0.3), kit.cloth)
    _walking_legs(c, kit, bx)
    torso = box(8.5, 11.5, bx - 1.6, bx + 1.6)
    c.paint_toned(torso, kit.cloth)
    c.paint(torso & (np.abs(Y - 11.0) < 0.5) & c.chance(0.5), kit.leather)
    c.paint_outlined(box(9.0, 11.8, bx - 3.2, bx - 2.0) & c.chance(0.25), kit.leather)
    swing = c.uniform(-1.5, 2.0)
    c.paint(capsule(9.3, bx - 0.2, 11.2, bx + swing, 0.7), kit.cloth[1])
    c.paint(ellipse(11.6, bx + swing, 0.6, 0.6), kit.skin)

    head = ellipse(head_cy, head_cx, head_r, head_r * c.uniform(0.95, 1.1))
    nose = box(head_cy + 0.5, head_cy + 1.4, head_cx + head_r - 0.5, head_cx + head_r + 0.9)
    c.paint(head | nose, kit.skin)
    back = X < head_cx - 0.3 + (Y - head_cy) * c.uniform(-0.6, 0.3)
    if headwear == "hair":
        hair = head & (back | (Y < head_cy - head_r * c.uniform(0.1, 0.5)))
        ponytail = capsule(head_cy - 0.5, head_cx - head_r, head_cy + 2.5, head_cx - head_r - 1.5, 0.9)
        c.paint_toned(hair | (ponytail & c.chance(0.3)), kit.hair)
    elif headwear == "cap":
        c.paint(head & back & (Y < head_cy + 1.5), kit.hair[0])
        cap = head & (Y < head_cy - c.uniform(0.3, 1.0))
        brim = box(head_cy - 1.5, head_cy - 0.7, head_cx, head_cx + head_r + c.uniform(0.8, 1.8))
        c.paint_toned(cap | brim, kit.accent)
    elif headwear == "helmet":
        plume = capsule(head_cy - head_r - 0.3, head_cx - 0.5, head_cy - head_r + 1.5, head_cx - 3.5, 0.9)
        c.paint_outlined(plume & c.chance(0.5), kit.accent[0])
        visor = (X > head_cx + 0.3) & (Y > head_cy - 0.5) & (Y < head_cy + 1.6)
        c.paint_toned(ellipse(head_cy - 0.3, head_cx, head_r + 0.4, head_r + 0.3) & ~visor, kit.metal)
    elif headwear == "hood":
        face = (X > head_cx + 0.2) & (Y > head_cy - 1.0)
        c.paint_toned(ellipse(head_cy - 0.2, head_cx - 0.4, head_r + 0.6, head_r + 0.5) & ~face, kit.cloth)
    eye = (np.abs(X - np.round(head_cx + head_r * 0.55)) < 0.5) & (np.abs(Y - np.round(head_cy + 0.4)) < 0.5)
    c.paint(eye, OUTLINE)
    c.mirror(c.chance(0.5))


def _walking_legs(c, kit, bx):
    """Legs mid-stride; the far leg is drawn first and darker for depth."""
    stride = c.uniform(0.5, 2.5)
    for direction, trousers in ((-1, kit.trousers[1]), (1, kit.trousers[0])):
        foot_x = bx + direction * stride
        c.paint(capsule(11.2, bx, 13.6, foot_x, 0.8), trousers)
        c.paint(box(13.6, 14.4, foot_x - 0.8, foot_x + 1.6), kit.leather)


def _quadruped(c):
    """Four-legged critter in profile: dog, cat, pig, fox..."""
    fur = c.pick([(160, 110, 60), (230, 150, 60), (240, 240, 235), (90, 90, 95),
                  (240, 180, 180), (200, 170, 130)], 15)
    body_cy, body_cx = c.uniform(9.0, 10.0), c.uniform(6.0, 7.0)
    body_rx, body_ry = c.uniform(4.0, 5.0), c.uniform(2.2, 3.0)
    head_cy, head_cx = body_cy - c.uniform(2.5, 3.5), body_cx + body_rx - c.uniform(0.0, 1.0)
    head_r = c.uniform(2.2, 2.9)
    step = c.uniform(-1.0, 1.0)
    tail = capsule(body_cy - 0.5, body_cx - body_rx + 0.5, body_cy - c.uniform(2.0, 4.5),
                    body_cx - body_rx - c.uniform(1.5, 2.5), 0.7, 0.5)
    coat = c.tone(fur, 0.25)
    c.paint(tail, coat[1])
    # Far legs first and in shadow; diagonal pairs swing together, as in a trot.
    for k, (x_off, slot) in enumerate(((-body_rx + 1.2, coat[1]), (body_rx - 1.8, coat[1]),
                                       (-body_rx + 2.4, coat[0]), (body_rx - 0.6, coat[0]))):
        swing = step if k % 2 == 0 else -step
        c.paint(capsule(body_cy + 1.0, body_cx + x_off, 13.8, body_cx + x_off + swing, 0.6), slot)
    body = ellipse(body_cy, body_cx, body_ry, body_rx)
    c.paint_toned(body, coat)
    ear = polygon([(head_cy - head_r - c.uniform(1.2, 2.2), head_cx - c.uniform(0.0, 1.0)),
                    (head_cy - 1.0, head_cx - 1.8), (head_cy - 1.0, head_cx + 0.2)])
    head = ellipse(head_cy, head_cx, head_r, head_r)
    snout = ellipse(head_cy + 1.0, head_cx + head_r - 0.5, c.uniform(0.9, 1.3), c.uniform(1.3, 2.0))
    c.paint_toned(head | snout, coat)
    c.paint_outlined(ear, coat[1])
    nose_x = np.round(head_cx + head_r - 0.5 + c.uniform(0.8, 1.6))
    c.paint((np.abs(X - nose_x) < 0.5) & (np.abs(Y - np.round(head_cy + 0.5)) < 0.5) & snout, OUTLINE)
    eye = (np.abs(X - np.round(head_cx + 0.3)) < 0.5) & (np.abs(Y - np.round(head_cy - 0.5)) < 0.5)
    c.paint(eye, OUTLINE)
    spots = ellipse(body_cy - 0.8, body_cx + c.uniform(-2.0, 1.0), 1.0, 1.5) & body & c.chance(0.4)
    c.paint(spots, c.add(darker(fur, 0.4)))
    c.mirror(c.chance(0.5))


def _bird(c):
    """Round bird or chick in profile, walking on two thin legs."""
    rgb = c.hsv((0, 1), (0.4, 0.9), (0.6, 0.95))
    cy, cx = c.uniform(7.5, 8.5), c.uniform(7.0, 7.8)
    r = c.uniform(3.8, 4.8)
    beak_rgb = c.add(c.hsv((0.08, 0.14), (0.7, 0.95), (0.9, 1.0)))
    stride = c.uniform(0.0, 1.5)
    for direction in (-1, 1):
        hip_x = cx + direction * 0.8
        c.paint(capsule(cy + r - 0.5, hip_x, 14.2, hip_x + direction * stride, 0.45), beak_rgb)
    tail = polygon([(cy - 0.5, cx - r + 1.0), (cy - c.uniform(2.0, 4.0), cx - r - 2.0),
                     (cy + 1.5, cx - r - 1.5)])
    c.paint_shaded(tail, darker(rgb, 0.2))
    body = ellipse(cy, cx, r, r * c.uniform(1.0, 1.15))
    c.paint_shaded(body, rgb)
    belly = body & ellipse(cy + r * 0.45, cx + r * 0.3, r * 0.55, r * 0.6)
    c.paint(belly, c.add(lighter(rgb, 0.5)))
    wing = rotated_ellipse(cy + 0.5, cx - 0.8, 1.3, c.uniform(2.2, 3.0), c.uniform(0.1, 0.5))
    c.paint_shaded(wing, darker(rgb, 0.25), 0.25)
    beak = polygon([(cy - 1.5, cx + r - 0.5), (cy - 0.4, cx + r + c.uniform(1.8, 3.0)),
                     (cy + 0.7, cx + r - 0.5)])
    c.paint(beak, beak_rgb)
    eye = (np.abs(X - np.round(cx + r * 0.45)) < 0.5) & (np.abs(Y - np.round(cy - r * 0.4)) < 0.5)
    c.paint(eye, OUTLINE)
    crest = capsule(cy - r + 0.5, cx, cy - r - c.uniform(1.0, 2.0), cx - 1.5, 0.6) & c.chance(0.4)
    c.paint(crest, c.add(darker(rgb, 0.3)))
    c.mirror(c.chance(0.5))


# (draw function, relative weight): how often each variant of the class is drawn.
VARIANTS = (
    (lambda c: _walker(c, "hair"), 3), (lambda c: _walker(c, "cap"), 1), (lambda c: _walker(c, "helmet"), 1),
    (lambda c: _walker(c, "hood"), 1), (_quadruped, 1), (_bird, 1),
)
