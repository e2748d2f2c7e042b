"""The palette-indexed canvas a batch of sprites is painted on, its random parameters, and the final render.

Parts are painted back to front as palette slots (slot 0 the background, slot 1 the dark outline); ``render``
outlines every shape, jitters each sprite by a pixel or two and looks its slots up in its own palette.
"""

import numpy as np

from diffusion.data.procedural.palettes import darker, hsv
from diffusion.data.procedural.shapes import SIZE, dilate, shadow_rim

OUTLINE = 1  # palette slot 0 is the background, slot 1 the outline/eye colour


class Canvas:
    """Palette-indexed canvases for n sprites plus their random parameters."""

    def __init__(self, n, rng, symmetric=False):
        self.n, self.rng, self.symmetric = n, rng, symmetric
        self.ink = np.zeros((n, SIZE, SIZE), np.uint8)
        self.bare = np.zeros((n, SIZE, SIZE), bool)  # thin details that get no outline
        pastel = hsv(rng.random(n), rng.uniform(0.04, 0.12, n), rng.uniform(0.96, 1.0, n))
        background = np.where(rng.random((n, 1)) < 0.75, 255.0, pastel)
        outline = hsv(rng.random(n), rng.uniform(0.2, 0.6, n), rng.uniform(0.06, 0.2, n))
        self.palette = [background, outline]

    # Random parameters shaped (n, 1, 1) so they broadcast over the pixel grid.
    def uniform(self, low, high):
        return self.rng.uniform(low, high, (self.n, 1, 1)).astype(np.float32)

    def chance(self, p):
        return self.rng.random((self.n, 1, 1)) < p

    def sign(self):
        return np.where(self.chance(0.5), 1.0, -1.0).astype(np.float32)

    def centre(self):
        """Mirror axis of a symmetric sprite: on a pixel column or between two."""
        return np.where(self.chance(0.5), 7.5, 7.0).astype(np.float32)

    @staticmethod
    def snap(offset, centre):
        """Round an offset from ``centre`` so that it lands on a pixel centre."""
        frac = centre % 1.0
        return np.round(offset - frac) + frac

    # Per-sprite colours, shaped (n, 3).
    def hsv(self, hue, sat, val):
        return hsv(self.rng.uniform(*hue, self.n), self.rng.uniform(*sat, self.n),
                    self.rng.uniform(*val, self.n))

    def pick(self, choices, jitter=10.0):
        choices = np.asarray(choices, np.float32)
        base = choices[self.rng.integers(0, len(choices), self.n)]
        return base + self.rng.uniform(-jitter, jitter, (self.n, 3)).astype(np.float32)

    # Painting.
    def add(self, rgb):
        self.palette.append(np.asarray(rgb, np.float32))
        return len(self.palette) - 1

    def paint(self, mask, slot):
        np.copyto(self.ink, np.uint8(slot), where=mask)
        self.bare &= ~mask

    def paint_bare(self, mask, slot):
        """Paint thin lines (legs, stems) that would drown in an outline of their own."""
        self.paint(mask, slot)
        self.bare |= mask

    def paint_outlined(self, mask, slot):
        """Paint a part in front of earlier ones, separated by its own outline."""
        mask = np.broadcast_to(mask, self.ink.shape)
        self.paint(dilate(mask), OUTLINE)
        self.paint(mask, slot)

    def tone(self, rgb, shade=0.3):
        """A (fill, shadow) pair of slots, shared by the parts of one material."""
        return self.add(rgb), self.add(darker(rgb, shade))

    def paint_toned(self, mask, tone, outlined=False):
        """Fill a part with tone[0] and its shadow rim with tone[1]."""
        mask = np.broadcast_to(mask, self.ink.shape)
        if outlined:
            self.paint(dilate(mask), OUTLINE)
        self.paint(mask, tone[0])
        self.paint(shadow_rim(mask, self.symmetric), tone[1])

    def paint_shaded(self, mask, rgb, shade=0.3, outlined=False):
        """Like paint_toned, for a colour used by this one part only."""
        self.paint_toned(mask, self.tone(rgb, shade), outlined)

    def mirror(self, flip):
        """Flip the chosen sprites left-right (profiles drawn facing right)."""
        self.ink = np.where(flip, self.ink[:, :, ::-1], self.ink)
        self.bare = np.where(flip, self.bare[:, :, ::-1], self.bare)

    def render(self):
        body = (self.ink > 0) & ~self.bare
        self.ink[dilate(body) & (self.ink == 0)] = OUTLINE
        ink = _jitter(self.ink, self.rng)
        palette = np.clip(np.round(np.stack(self.palette, 1)), 0, 255).astype(np.uint8)
        return palette[np.arange(self.n)[:, None, None], ink]


def _jitter(ink, rng, max_shift=2):
    """Shift each sprite by up to max_shift pixels without pushing it off the canvas."""
    filled = ink > 0
    rows, cols = filled.any(2), filled.any(1)
    shifts = []
    for used in (rows, cols):
        first = used.argmax(1)
        last = SIZE - 1 - used[:, ::-1].argmax(1)
        low = np.maximum(-first, -max_shift)
        high = np.maximum(np.minimum(SIZE - 1 - last, max_shift), low)
        shifts.append(rng.integers(low, high + 1))
    dy, dx = shifts
    src_rows = (np.arange(SIZE) - dy[:, None]) % SIZE
    src_cols = (np.arange(SIZE) - dx[:, None]) % SIZE
    return ink[np.arange(len(ink))[:, None, None], src_rows[:, :, None], src_cols[:, None, :]]
