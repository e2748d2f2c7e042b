"""Colours: the base colours of materials (skin, hair, metal, wood, bone) and vectorised HSV, darker, lighter."""

import numpy as np

SKIN = [(255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66),
        (141, 85, 36), (255, 205, 178), (150, 205, 120), (170, 190, 235)]
HAIR = [(40, 30, 25), (95, 60, 30), (150, 95, 45), (235, 200, 90), (200, 70, 30),
        (235, 235, 235), (70, 110, 220), (220, 90, 170), (60, 170, 90)]
METAL = [(165, 172, 185), (205, 210, 220), (235, 190, 60), (200, 125, 60), (115, 120, 135)]
WOOD = [(140, 90, 45), (115, 70, 35), (170, 115, 60)]
BONE = [(240, 235, 215), (225, 225, 225), (235, 225, 180), (200, 215, 190)]


def hsv(h, s, v):
    """Vectorised HSV (all in [0, 1], hue wraps) to RGB in [0, 255]."""
    h = (h % 1.0) * 6.0
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1).astype(np.float32) * 255.0


def darker(rgb, amount=0.35):
    return rgb * (1.0 - amount)


def lighter(rgb, amount=0.45):
    return rgb + (255.0 - rgb) * amount
