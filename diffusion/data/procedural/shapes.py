"""The 16x16 pixel grid and the shapes drawn on it, each a boolean mask for a whole batch of sprites.

Parameters are arrays shaped (n, 1, 1) that broadcast against the grid ``Y, X`` (each (16, 16)), so one
call draws a shape with different parameters on every sprite.
"""

import numpy as np

SIZE = 16

Y, X = (a.astype(np.float32) for a in np.mgrid[0:SIZE, 0:SIZE])


# Pixel centres sit on integer coordinates; a shape covers a pixel when the
# centre falls inside it.  ``x`` may be replaced by |X - centre| to draw a
# mirrored pair, or by a signed distance to draw on a chosen side.

def ellipse(cy, cx, ry, rx, x=X):
    return ((Y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def rotated_ellipse(cy, cx, ry, rx, angle):
    dy, dx = Y - cy, X - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def box(y0, y1, x0, x1, x=X):
    return (Y >= y0) & (Y <= y1) & (x >= x0) & (x <= x1)


def capsule(y0, x0, y1, x1, r0, r1=None, x=X):
    """Thick segment whose radius tapers linearly from r0 to r1."""
    r1 = r0 if r1 is None else r1
    vy, vx = y1 - y0, x1 - x0
    t = np.clip(((Y - y0) * vy + (x - x0) * vx) / (vy * vy + vx * vx + 1e-6), 0.0, 1.0)
    radius = r0 + (r1 - r0) * t
    return (Y - y0 - t * vy) ** 2 + (x - x0 - t * vx) ** 2 <= radius * radius


def polygon(points, x=X):
    """Convex polygon from (y, x) vertices in either winding order."""
    crosses = [(xb - xa) * (Y - ya) - (yb - ya) * (x - xa)
               for (ya, xa), (yb, xb) in zip(points, points[1:] + points[:1])]
    inside_cw = np.logical_and.reduce([c >= -1e-3 for c in crosses])
    inside_ccw = np.logical_and.reduce([c <= 1e-3 for c in crosses])
    return inside_cw | inside_ccw


def star(cy, cx, r_out, r_in, points, turn):
    """Star with ``points`` tips; radius interpolates between tips and notches."""
    dy, dx = Y - cy, X - cx
    phase = (np.arctan2(dx, -dy) / (2 * np.pi) * points + turn) % 1.0
    tip = np.abs(phase - 0.5) * 2  # 1 at a tip, 0 in a notch
    return np.hypot(dy, dx) <= r_in + (r_out - r_in) * tip ** 2


def neighbour(mask, dy, dx):
    """Mask value at (y + dy, x + dx), False beyond the border."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    return padded[:, 1 + dy:1 + dy + SIZE, 1 + dx:1 + dx + SIZE]


def dilate(mask):
    return (mask | neighbour(mask, -1, 0) | neighbour(mask, 1, 0)
            | neighbour(mask, 0, -1) | neighbour(mask, 0, 1))


def shadow_rim(mask, symmetric):
    """Pixels on the bottom edge of a shape, and on its right edge unless the
    sprite is meant to mirror exactly: where pixel art puts shade."""
    inside = neighbour(mask, 1, 0)
    if not symmetric:
        inside = inside & neighbour(mask, 0, 1)
    return mask & ~inside
