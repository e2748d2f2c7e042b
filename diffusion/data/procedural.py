"""Procedural 16x16 pixel-art game sprites: the framework's default training data.

The five classes mirror the sprite set of DeepLearning.AI's "How Diffusion Models
Work" course (hero, non-hero, food, spell, side-facing) so that experiments run
without a download.  Every sprite is drawn from parametrised primitives
(ellipses, boxes, capsules, convex polygons, stars) evaluated on the 16x16 pixel
grid for a whole batch at once: parameters are arrays shaped (n, 1, 1) that
broadcast against the grid.  Parts are painted back to front as palette slots,
then every shape gets a dark 1-px outline and the sprite is jittered by a pixel
or two.  Nothing loops over individual sprites, so 90k sprites take seconds.

Run ``python -m diffusion.data.procedural --n 64 --preview out.png`` for a preview.
"""

import numpy as np

CLASSES = ("hero", "non-hero", "food", "spell", "side-facing")
SIZE = 16

_Y, _X = (a.astype(np.float32) for a in np.mgrid[0:SIZE, 0:SIZE])
_OUTLINE = 1  # palette slot 0 is the background, slot 1 the outline/eye colour

_SKIN = [(255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66),
         (141, 85, 36), (255, 205, 178), (150, 205, 120), (170, 190, 235)]
_HAIR = [(40, 30, 25), (95, 60, 30), (150, 95, 45), (235, 200, 90), (200, 70, 30),
         (235, 235, 235), (70, 110, 220), (220, 90, 170), (60, 170, 90)]
_METAL = [(165, 172, 185), (205, 210, 220), (235, 190, 60), (200, 125, 60), (115, 120, 135)]
_WOOD = [(140, 90, 45), (115, 70, 35), (170, 115, 60)]
_BONE = [(240, 235, 215), (225, 225, 225), (235, 225, 180), (200, 215, 190)]


# ---------------------------------------------------------------- primitives
# Pixel centres sit on integer coordinates; a shape covers a pixel when the
# centre falls inside it.  ``x`` may be replaced by |X - centre| to draw a
# mirrored pair, or by a signed distance to draw on a chosen side.

def _ellipse(cy, cx, ry, rx, x=_X):
    return ((_Y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _rotated_ellipse(cy, cx, ry, rx, angle):
    dy, dx = _Y - cy, _X - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _box(y0, y1, x0, x1, x=_X):
    return (_Y >= y0) & (_Y <= y1) & (x >= x0) & (x <= x1)


def _capsule(y0, x0, y1, x1, r0, r1=None, x=_X):
    """Thick segment whose radius tapers linearly from r0 to r1."""
    r1 = r0 if r1 is None else r1
    vy, vx = y1 - y0, x1 - x0
    t = np.clip(((_Y - y0) * vy + (x - x0) * vx) / (vy * vy + vx * vx + 1e-6), 0.0, 1.0)
    radius = r0 + (r1 - r0) * t
    return (_Y - y0 - t * vy) ** 2 + (x - x0 - t * vx) ** 2 <= radius * radius


def _polygon(points, x=_X):
    """Convex polygon from (y, x) vertices in either winding order."""
    crosses = [(xb - xa) * (_Y - ya) - (yb - ya) * (x - xa)
               for (ya, xa), (yb, xb) in zip(points, points[1:] + points[:1])]
    inside_cw = np.logical_and.reduce([c >= -1e-3 for c in crosses])
    inside_ccw = np.logical_and.reduce([c <= 1e-3 for c in crosses])
    return inside_cw | inside_ccw


def _star(cy, cx, r_out, r_in, points, turn):
    """Star with ``points`` tips; radius interpolates between tips and notches."""
    dy, dx = _Y - cy, _X - cx
    phase = (np.arctan2(dx, -dy) / (2 * np.pi) * points + turn) % 1.0
    tip = np.abs(phase - 0.5) * 2  # 1 at a tip, 0 in a notch
    return np.hypot(dy, dx) <= r_in + (r_out - r_in) * tip ** 2


def _neighbour(mask, dy, dx):
    """Mask value at (y + dy, x + dx), False beyond the border."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    return padded[:, 1 + dy:1 + dy + SIZE, 1 + dx:1 + dx + SIZE]


def _dilate(mask):
    return (mask | _neighbour(mask, -1, 0) | _neighbour(mask, 1, 0)
            | _neighbour(mask, 0, -1) | _neighbour(mask, 0, 1))


def _shadow_rim(mask, symmetric):
    """Pixels on the bottom edge of a shape, and on its right edge unless the
    sprite is meant to mirror exactly: where pixel art puts shade."""
    inside = _neighbour(mask, 1, 0)
    if not symmetric:
        inside = inside & _neighbour(mask, 0, 1)
    return mask & ~inside


# ------------------------------------------------------------------- colours

def _hsv(h, s, v):
    """Vectorised HSV (all in [0, 1], hue wraps) to RGB in [0, 255]."""
    h = (h % 1.0) * 6.0
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1).astype(np.float32) * 255.0


def _darker(rgb, amount=0.35):
    return rgb * (1.0 - amount)


def _lighter(rgb, amount=0.45):
    return rgb + (255.0 - rgb) * amount


class _Batch:
    """Palette-indexed canvases for n sprites plus their random parameters."""

    def __init__(self, n, rng, symmetric=False):
        self.n, self.rng, self.symmetric = n, rng, symmetric
        self.ink = np.zeros((n, SIZE, SIZE), np.uint8)
        self.bare = np.zeros((n, SIZE, SIZE), bool)  # thin details that get no outline
        pastel = _hsv(rng.random(n), rng.uniform(0.04, 0.12, n), rng.uniform(0.96, 1.0, n))
        background = np.where(rng.random((n, 1)) < 0.75, 255.0, pastel)
        outline = _hsv(rng.random(n), rng.uniform(0.2, 0.6, n), rng.uniform(0.06, 0.2, n))
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
        return _hsv(self.rng.uniform(*hue, self.n), self.rng.uniform(*sat, self.n),
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
        self.paint(_dilate(mask), _OUTLINE)
        self.paint(mask, slot)

    def tone(self, rgb, shade=0.3):
        """A (fill, shadow) pair of slots, shared by the parts of one material."""
        return self.add(rgb), self.add(_darker(rgb, shade))

    def paint_toned(self, mask, tone, outlined=False):
        """Fill a part with tone[0] and its shadow rim with tone[1]."""
        mask = np.broadcast_to(mask, self.ink.shape)
        if outlined:
            self.paint(_dilate(mask), _OUTLINE)
        self.paint(mask, tone[0])
        self.paint(_shadow_rim(mask, self.symmetric), tone[1])

    def paint_shaded(self, mask, rgb, shade=0.3, outlined=False):
        """Like paint_toned, for a colour used by this one part only."""
        self.paint_toned(mask, self.tone(rgb, shade), outlined)

    def mirror(self, flip):
        """Flip the chosen sprites left-right (profiles drawn facing right)."""
        self.ink = np.where(flip, self.ink[:, :, ::-1], self.ink)
        self.bare = np.where(flip, self.bare[:, :, ::-1], self.bare)

    def render(self):
        body = (self.ink > 0) & ~self.bare
        self.ink[_dilate(body) & (self.ink == 0)] = _OUTLINE
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


# -------------------------------------------------------------------- heroes

class _Outfit:
    """The few palette slots one character is painted with, shared between parts
    so that a sprite keeps a small palette however much gear it carries."""

    def __init__(self, c):
        self.skin = c.add(c.pick(_SKIN))
        self.hair = c.tone(c.pick(_HAIR), 0.25)
        self.cloth = c.tone(c.hsv((0, 1), (0.45, 0.9), (0.45, 0.9)), 0.3)
        self.trousers = c.tone(c.hsv((0, 1), (0.2, 0.6), (0.3, 0.6)), 0.35)
        self.leather = c.add(c.pick(_WOOD, 20))
        self.metal = c.tone(c.pick(_METAL), 0.3)
        self.accent = c.tone(c.hsv((0, 1), (0.6, 1.0), (0.75, 1.0)), 0.3)


class _Head:
    """Geometry of a front-facing head, shared by the headwear painters."""

    def __init__(self, c, cy, cx, ry, rx):
        self.cy, self.cx, self.ry, self.rx = cy, cx, ry, rx
        self.top = cy - ry
        self.ax = np.abs(_X - cx)
        self.mask = _ellipse(cy, cx, ry, rx)
        self.eye_row = np.round(cy + c.uniform(0.3, 1.0))
        self.eye_x = c.snap(rx * c.uniform(0.28, 0.45), cx)


def _hero(c, headwear):
    """Front-facing chibi adventurer: legs, tunic, arms, big head, headwear, gear."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    tall_hat = headwear in ("wizard", "crown")
    ry = c.uniform(2.9, 3.3) if tall_hat else c.uniform(3.3, 3.8)
    bottom = 9.4 if tall_hat else 8.6  # hats need the rows above the head
    head = _Head(c, bottom - ry, cx, ry, ry * c.uniform(1.1, 1.35))
    body_top = float(np.floor(bottom) + 1)
    bw = c.snap(c.uniform(1.6, 2.8), cx)  # body half-width, on the pixel grid
    kit = _Outfit(c)

    if headwear == "hair":
        long_hair = _box(head.cy, body_top + c.uniform(0.5, 2.5), 0, head.rx + 0.2, x=ax) & c.chance(0.35)
        c.paint(long_hair, kit.hair[1])
    if headwear == "hood":
        c.paint(_box(body_top, 13.6, 0, bw + 1.5, x=ax), kit.cloth[1])
    robe = c.chance(0.8 if headwear in ("wizard", "hood") else 0.15)
    _front_legs_and_body(c, kit, cx, body_top, bw, robe)

    c.paint(head.mask, kit.skin)
    if headwear in ("hair", "wizard", "crown"):
        _hair(c, head, kit.hair)
    if headwear == "helmet":
        _helmet(c, head, kit)
    elif headwear == "hood":
        face = _ellipse(head.cy + 0.9, cx, head.ry * 0.7, np.maximum(head.rx * 0.72, head.eye_x + 1.2))
        c.paint_toned(_ellipse(head.cy - 0.3, cx, head.ry + 0.6, head.rx + 0.5) & ~face, kit.cloth)
    elif headwear == "wizard":
        _wizard_hat(c, head, kit)
    elif headwear == "crown":
        _crown(c, head, kit)
    eyes = (np.abs(head.ax - head.eye_x) < 0.5) & (_Y >= head.eye_row) & (_Y <= head.eye_row + c.chance(0.6))
    c.paint(eyes, _OUTLINE)
    if headwear == "wizard":
        beard = _ellipse(head.cy + head.ry * 0.9, cx, 1.8, head.rx * 0.55) & c.chance(0.5)
        c.paint(beard, kit.hair[0])
    _hero_gear(c, kit, cx, bw)


def _front_legs_and_body(c, kit, cx, body_top, bw, robe):
    """Legs and boots, tunic (or a robe down to the boots), belt, sleeves and hands."""
    ax = np.abs(_X - cx)
    legs = _box(12.5, 14.4, c.snap(c.uniform(0.6, 1.2), cx), bw, x=ax)
    c.paint(legs, kit.cloth[1])
    c.paint(legs & (_Y > 13.5), kit.leather)
    flare = c.uniform(0.2, 0.5) * robe
    torso = _box(body_top, 12.4 + robe * 1.2, 0, bw + flare * (_Y - body_top), x=ax)
    c.paint_toned(torso, kit.cloth)
    belt = (np.abs(_Y - c.uniform(11.0, 12.2)) < 0.5) & torso & c.chance(0.6)
    c.paint(belt, kit.leather)
    c.paint(belt & (ax < 0.6), kit.metal[0])
    arms = _box(body_top, 12.4, bw + 0.6, bw + 1.4, x=ax)
    c.paint(arms, kit.cloth[0])
    c.paint(arms & (_Y > 11.5), kit.skin)


def _hair(c, head, tone):
    # Keep a row of forehead above the eyes and the sideburns outside them, so
    # the hair's shaded rim never swallows the face.
    hairline = np.minimum(head.cy - head.ry * c.uniform(0.0, 0.45), head.eye_row - 1.0)
    sideburn = (head.ax > np.maximum(head.rx - c.uniform(0.8, 1.6), head.eye_x + 0.6)) & (
        _Y < head.cy + c.uniform(0.0, 1.5))
    volume = _ellipse(head.cy - 0.5, head.cx, head.ry + 0.5, head.rx + 0.4) & (_Y < head.eye_row - 1.0)
    c.paint_toned((head.mask & ((_Y < hairline) | sideburn)) | (volume & c.chance(0.5)), tone)


def _helmet(c, head, kit):
    horns = _capsule(head.cy - 1.0, head.rx - 0.3, head.top - 0.6, head.rx + 1.6, 0.9, 0.35, x=head.ax)
    c.paint(horns & c.chance(0.4), kit.accent[0])
    c.paint_toned(_ellipse(head.cy - 0.2, head.cx, head.ry + 0.4, head.rx + 0.3), kit.metal)
    window = _box(head.eye_row - 1, head.eye_row + c.uniform(1.0, 2.0), 0,
                  head.eye_x + c.uniform(0.6, 1.6), x=head.ax) & head.mask
    c.paint(window, kit.skin)


def _wizard_hat(c, head, kit):
    brim_y = head.top + 1.0
    brim = _ellipse(brim_y, head.cx, 0.8, head.rx + c.uniform(0.8, 1.8))
    tip_x = head.cx + c.uniform(-0.6, 0.6)
    cone = _polygon([(c.uniform(0.0, 0.6), tip_x), (brim_y, head.cx + c.uniform(2.2, 3.2)),
                     (brim_y, head.cx - c.uniform(2.2, 3.2))])
    c.paint_toned(brim | cone, kit.cloth)
    c.paint(cone & (_Y > brim_y - 1.6) & c.chance(0.7), kit.accent[0])


def _crown(c, head, kit):
    half = c.snap(head.rx * c.uniform(0.45, 0.7), head.cx)
    band = _box(head.top, head.top + 1.2, 0, half, x=head.ax)
    points = _box(head.top - 1.4, head.top, 0, half, x=head.ax) & (
        (head.ax < 0.6) | (np.abs(head.ax - half) < 0.5))
    c.paint_toned(band | points, kit.metal)
    c.paint(band & (head.ax < 0.6) & (_Y >= head.top + 0.5), kit.accent[0])


def _hero_gear(c, kit, cx, bw):
    """A weapon on one side and maybe a shield on the other: the only asymmetry."""
    side = c.sign()
    sx = (_X - cx) * side  # positive towards the weapon hand
    hand = bw + 2.0
    kind = c.rng.choice(4, (c.n, 1, 1), p=[0.4, 0.25, 0.2, 0.15])  # none, sword, staff, axe
    grip = _box(11.0, 13.2, hand - 0.5, hand + 0.5, x=sx)
    blade = _box(c.uniform(4.0, 6.5), 10.5, hand - 0.5, hand + 0.5, x=sx)
    guard = _box(10.5, 11.4, hand - 1.5, hand + 1.5, x=sx)
    c.paint_outlined((blade | guard | grip) & (kind == 1), kit.metal[0])
    c.paint(grip & (kind == 1), kit.leather)
    shaft = _box(c.uniform(2.5, 4.0), 14.4, hand - 0.5, hand + 0.5, x=sx) & (kind == 2)
    c.paint_outlined(shaft, kit.leather)
    c.paint_outlined(_ellipse(3.0, hand, 1.3, 1.3, x=sx) & (kind == 2), kit.accent[0])
    handle = _box(6.0, 13.6, hand - 0.5, hand + 0.5, x=sx) & (kind == 3)
    c.paint_outlined(handle, kit.leather)
    axe_head = _polygon([(5.0, hand + 0.5), (8.5, hand + 0.5), (9.5, hand + 2.6), (4.0, hand + 2.6)], x=sx)
    c.paint_outlined(axe_head & (kind == 3), kit.metal[0])
    shield_y, shield_x = c.uniform(10.5, 11.5), -(bw + 1.8)
    shield = _ellipse(shield_y, shield_x, c.uniform(2.2, 2.8), c.uniform(1.6, 2.2), x=sx) & c.chance(0.3)
    c.paint_toned(shield, kit.accent)
    c.paint(shield & _ellipse(shield_y, shield_x, 0.8, 0.6, x=sx), kit.metal[0])


# ---------------------------------------------------------------- non-heroes

def _slime(c):
    """Dome of goo with a flat base, dark eyes, maybe a mouth and a shine."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    top, base = c.uniform(3.0, 7.0), c.uniform(13.2, 14.4)
    ry = (base - top) * c.uniform(1.05, 1.4)
    rx = c.uniform(4.5, 6.6)
    body = _ellipse(top + ry, cx, ry, rx) & (_Y <= base)
    rgb = c.hsv((0, 1), (0.5, 0.9), (0.6, 0.95))
    goo = c.tone(rgb)
    c.paint_toned(body, goo)
    c.paint(body & (_Y > base - 1.0), goo[1])
    eye_y = top + (base - top) * c.uniform(0.35, 0.5)
    ex = c.snap(c.uniform(1.0, 2.6), cx)
    c.paint((np.abs(ax - ex) < 0.5) & (_Y >= np.round(eye_y)) & (_Y <= np.round(eye_y) + 1), _OUTLINE)
    whites = (np.abs(ax - ex) < 0.5) & (np.abs(_Y - np.round(eye_y) + 1) < 0.5) & c.chance(0.5)
    c.paint(whites, c.add(c.pick([(255, 255, 255)], 4)))
    mouth = (ax < c.uniform(0.4, 1.6)) & (np.abs(_Y - np.round(eye_y) - 3) < 0.5) & c.chance(0.6)
    c.paint(mouth, _OUTLINE)
    c.paint(_ellipse(top + 1.5, cx - rx * 0.5, 0.8, 0.7), c.add(_lighter(rgb, 0.7)))


def _ghost(c):
    """Pale sheet ghost: round head, wavy hem, hollow eyes, maybe arms and an O mouth."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    rx = c.uniform(4.0, 5.6)
    top = c.uniform(1.5, 3.5)
    base = c.uniform(12.5, 14.0)
    period = c.uniform(1.8, 3.2)
    waves = base - c.uniform(0.8, 1.8) * (0.5 + 0.5 * np.cos(2 * np.pi * ax / period))
    body = (_ellipse(top + rx, cx, rx, rx) | _box(top + rx, 14.5, 0, rx, x=ax)) & (_Y <= waves)
    arms = _ellipse(top + rx + c.uniform(0.5, 2.5), rx + 0.4, 1.0, 1.5, x=ax) & c.chance(0.5)
    rgb = c.hsv((0, 1), (0.0, 0.3), (0.92, 1.0))
    c.paint_shaded(body | arms, rgb, 0.18)
    eye_y = top + rx * c.uniform(0.7, 1.1)
    ex = c.snap(c.uniform(1.0, 2.5), cx)
    eye_rows = (_Y >= np.round(eye_y)) & (_Y <= np.round(eye_y) + 1)
    eyes = (np.abs(ax - ex) < c.uniform(0.5, 1.0)) & (ax > 0.6) & eye_rows
    c.paint(eyes, _OUTLINE)
    mouth = _ellipse(eye_y + c.uniform(2.5, 3.2), cx, c.uniform(0.5, 1.3), c.uniform(0.5, 1.3)) & c.chance(0.6)
    c.paint(mouth, _OUTLINE)


def _bat(c):
    """Bat with raised, scalloped wings, pointed ears, glowing eyes and fangs."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    cy = c.uniform(8.0, 9.5)
    tip_y, tip_x = cy - c.uniform(4.5, 6.0), c.uniform(5.8, 6.6)
    outer_y, inner_y = tip_y + c.uniform(2.5, 4.0), cy + c.uniform(1.5, 2.5)
    wing = _polygon([(cy - 1.0, 1.0), (tip_y, tip_x), (outer_y, tip_x), (inner_y, 1.0)], x=ax)
    # Bites out of the trailing edge give the wing its membrane scallops.
    for k in (0.33, 0.72):
        bite_y, bite_x = outer_y + (inner_y - outer_y) * k, tip_x + (1.0 - tip_x) * k
        wing &= ~_ellipse(bite_y + 1.0, bite_x, 1.3, 1.1, x=ax)
    rgb = c.hsv((0.6, 1.1), (0.25, 0.6), (0.45, 0.8))
    c.paint_shaded(wing, _darker(rgb, 0.15))
    body = _ellipse(cy, cx, c.uniform(2.2, 2.8), c.uniform(1.7, 2.4))
    ears = _polygon([(cy - c.uniform(4.0, 5.0), c.uniform(1.2, 1.8)), (cy - 1.0, 0.2), (cy - 1.0, 2.0)], x=ax)
    c.paint_shaded(body | ears, rgb)
    eyes = (np.abs(ax - c.snap(c.uniform(1.2, 1.8), cx)) < 0.5) & (np.abs(_Y - np.round(cy - 0.5)) < 0.5)
    c.paint(eyes, c.add(c.hsv((-0.05, 0.15), (0.8, 1), (0.9, 1))))
    fangs = (np.abs(ax - c.snap(0.6, cx)) < 0.5) & (np.abs(_Y - np.round(cy + 1.5)) < 0.5) & c.chance(0.6)
    c.paint(fangs, c.add(c.pick([(255, 255, 255)], 3)))


def _skull(c):
    """Skull with dark sockets (sometimes glowing), nose hole, teeth, maybe horns."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    cy = c.uniform(5.5, 7.0)
    rx = c.uniform(4.3, 5.4)
    cranium = _ellipse(cy, cx, c.uniform(4.0, 4.8), rx)
    jaw = _box(cy + 2.0, cy + c.uniform(5.5, 7.0), 0, rx * c.uniform(0.55, 0.7), x=ax)
    horns = _capsule(cy - 1.5, rx - 1.0, cy - 5.0, rx + 1.2, 1.1, 0.3, x=ax) & c.chance(0.35)
    c.paint(horns, c.add(c.hsv((0, 0.1), (0.6, 0.9), (0.5, 0.8))))
    bone = c.pick(_BONE)
    c.paint_shaded(cranium | jaw, bone, 0.25)
    sockets = _ellipse(cy + 1.0, c.uniform(1.6, 2.4), c.uniform(1.0, 1.6), c.uniform(0.9, 1.4), x=ax)
    c.paint(sockets, _OUTLINE)
    glow = sockets & _ellipse(cy + 1.0, 1.8, 0.5, 0.5, x=ax) & c.chance(0.4)
    c.paint(glow, c.add(c.hsv((0, 1), (0.8, 1), (0.9, 1))))
    c.paint((ax < 0.6) & (np.abs(_Y - np.round(cy + 3.0)) < 0.5), _OUTLINE)
    teeth = jaw & (_Y > cy + 4.2) & (_Y < cy + 5.6) & ((np.floor(ax + 0.5 + cx % 1) % 2) == 1)
    c.paint(teeth, c.add(_darker(bone, 0.45)))


def _bug(c):
    """Beetle or spider from above: shell, small head, thin bent legs, antennae."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    cy = c.uniform(8.5, 10.0)
    ry, rx = c.uniform(3.0, 4.0), c.uniform(2.6, 3.4)
    shell = _ellipse(cy, cx, ry, rx)
    head_y = cy - ry - c.uniform(0.3, 1.0)
    head = _ellipse(head_y, cx, c.uniform(1.3, 1.9), c.uniform(1.6, 2.4))
    rgb = c.hsv((0, 1), (0.55, 0.95), (0.5, 0.9))
    reach = c.uniform(5.5, 6.8)
    legs = np.zeros(c.ink.shape, bool)
    for hip_y, knee_dy, foot_dy in ((cy - 1.5, -1.5, -2.5), (cy, -0.5, 0.5), (cy + 1.5, 0.5, 3.0)):
        knee_y, knee_x = hip_y + knee_dy, reach - 1.2
        legs |= _capsule(hip_y, 1.0, knee_y, knee_x, 0.55, x=ax)
        legs |= _capsule(knee_y, knee_x, hip_y + foot_dy, reach, 0.55, x=ax)
    c.paint_bare(legs, _OUTLINE)
    antennae = _capsule(head_y - 1.0, 0.8, head_y - c.uniform(2.5, 3.5), c.uniform(2.0, 3.5), 0.45, x=ax)
    c.paint_bare(antennae & c.chance(0.7), _OUTLINE)
    c.paint_shaded(shell, rgb)
    c.paint(shell & (ax < 0.6) & (_Y > cy - ry + 1) & c.chance(0.6), _OUTLINE)
    spots = _ellipse(cy + c.uniform(-1.0, 1.5), c.uniform(1.3, 2.0), 0.8, 0.7, x=ax) & shell & c.chance(0.6)
    c.paint(spots, c.add(_darker(rgb, 0.55)))
    c.paint(_ellipse(cy - ry * 0.5, cx - rx * 0.45, 0.8, 0.6) & shell, c.add(_lighter(rgb, 0.6)))
    c.paint_shaded(head, _darker(rgb, 0.25), outlined=True)
    eyes = (np.abs(ax - c.snap(c.uniform(0.6, 1.5), cx)) < 0.5) & (np.abs(_Y - np.round(head_y)) < 0.5)
    c.paint(eyes, c.add(c.pick([(255, 255, 255), (255, 230, 80), (255, 60, 60)], 5)))


def _eyeball(c):
    """Floating one-eyed blob trailing tentacles."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    cy = c.uniform(6.0, 7.5)
    r = c.uniform(4.0, 5.2)
    rgb = c.hsv((0, 1), (0.4, 0.8), (0.5, 0.85))
    tentacle_rgb = c.add(_darker(rgb, 0.2))
    for k, x0 in enumerate((0.0, 2.5, 4.5)):
        tip_x = x0 + c.uniform(-0.5, 1.5) * (k > 0)
        tentacle = _capsule(cy + r - 1.0, x0, c.uniform(12.8, 14.2), tip_x, 0.9, 0.5, x=ax)
        c.paint(tentacle & c.chance(0.8), tentacle_rgb)
    body = _ellipse(cy, cx, r, r * c.uniform(0.95, 1.15))
    c.paint_shaded(body, rgb)
    sclera = _ellipse(cy + 0.3, cx, r * 0.6, r * c.uniform(0.6, 0.75))
    c.paint(sclera, c.add(c.pick([(250, 250, 250), (245, 240, 200)], 5)))
    c.paint(_ellipse(cy + 0.3, cx, 1.6, 1.3), c.add(c.hsv((0, 1), (0.7, 1), (0.6, 1))))
    c.paint(_ellipse(cy + 0.3, cx, 0.7, 0.6), _OUTLINE)
    brow = _box(cy - r * 0.75, cy - r * 0.45, 0, r * 0.7, x=ax) & body & c.chance(0.5)
    c.paint(brow, c.add(_darker(rgb, 0.45)))


# ---------------------------------------------------------------------- food

def _fruit(c):
    """Apple, orange or plum: shaded round body, stem, usually a leaf."""
    cx = c.uniform(7.0, 8.0)
    cy = c.uniform(8.5, 9.5)
    rx, ry = c.uniform(4.0, 5.6), c.uniform(3.8, 5.0)
    notch = c.chance(0.5)
    body = _ellipse(cy, cx, ry, rx) & ~(_ellipse(cy - ry - 0.4, cx, 1.2, 1.2) & notch)
    rgb = c.hsv((-0.05, 0.35), (0.65, 0.95), (0.7, 0.95))
    c.paint_shaded(body, rgb)
    c.paint(body & ~_ellipse(cy - 0.8, cx - 0.8, ry, rx), c.add(_darker(rgb, 0.35)))
    c.paint(_ellipse(cy - ry * 0.45, cx - rx * 0.45, 1.0, 0.7), c.add(_lighter(rgb, 0.75)))
    top = cy - ry
    lean = c.uniform(-1.5, 1.5)
    c.paint_outlined(_capsule(top + 0.8, cx, top - 2.2, cx + lean, 0.55), c.add(c.pick(_WOOD)))
    side = c.sign()
    leaf = _rotated_ellipse(top - 1.0, cx + side * 2.0, 0.9, 1.8, side * c.uniform(0.2, 0.6)) & c.chance(0.8)
    c.paint_outlined(leaf, c.add(c.hsv((0.25, 0.38), (0.6, 0.9), (0.55, 0.8))))


def _banana(c):
    """Crescent banana at any angle, with brown tips."""
    cy, cx = c.uniform(7.0, 8.5), c.uniform(7.0, 8.5)
    r = c.uniform(5.5, 6.5)
    angle = c.uniform(0, 2 * np.pi)
    bite = c.uniform(2.0, 3.0)
    outer = _ellipse(cy, cx, r, r)
    inner = _ellipse(cy - bite * np.sin(angle), cx - bite * np.cos(angle), r * 1.05, r * 1.05)
    banana = outer & ~inner
    rgb = c.hsv((0.11, 0.16), (0.7, 0.9), (0.9, 1.0))
    c.paint_shaded(banana, rgb)
    # The crescent's tips lie farthest from its bulge; colour them brown.
    mid_y, mid_x = cy + r * np.sin(angle), cx + r * np.cos(angle)
    tips = banana & ((_Y - mid_y) ** 2 + (_X - mid_x) ** 2 > (r * 1.25) ** 2)
    c.paint(tips, c.add(c.pick(_WOOD)))


def _carrot(c):
    """Tapering carrot lying diagonally, ridged, with a green leafy top."""
    side = c.sign()
    y0, y1 = c.uniform(3.5, 5.0), c.uniform(12.5, 14.2)
    x0 = 7.5 + side * c.uniform(2.0, 3.5)
    x1 = 7.5 - side * c.uniform(2.0, 4.5)
    root = _capsule(y0, x0, y1, x1, c.uniform(2.0, 2.8), 0.5)
    rgb = c.hsv((0.04, 0.1), (0.75, 0.95), (0.85, 1.0))
    c.paint_shaded(root, rgb)
    t = ((_Y - y0) * (y1 - y0) + (_X - x0) * (x1 - x0)) / ((y1 - y0) ** 2 + (x1 - x0) ** 2)
    ridges = root & (np.abs((t * c.uniform(4.0, 6.0)) % 1.0 - 0.5) < 0.08) & (t > 0.15)
    c.paint(ridges, c.add(_darker(rgb, 0.35)))
    green = c.add(c.hsv((0.25, 0.38), (0.6, 0.9), (0.5, 0.8)))
    for turn in (-0.7, 0.0, 0.7):
        direction = np.arctan2(y0 - y1, x0 - x1) + turn
        length = c.uniform(2.5, 3.5)
        leaf = _capsule(y0, x0, y0 + length * np.sin(direction), x0 + length * np.cos(direction), 0.8, 0.4)
        c.paint(leaf, green)


def _cheese(c):
    """Cheese wedge: front face with holes, lighter sloping top."""
    flip = c.sign()
    base, top = c.uniform(11.5, 13.0), c.uniform(3.0, 5.5)
    left, right = c.uniform(1.5, 3.0), c.uniform(12.0, 13.5)
    peak_x = 7.5 + flip * (right - 7.5)
    far_x = 7.5 - flip * (7.5 - left)
    face = _polygon([(base, left), (base, right), (top + 2.5, right), (top + 2.5, left)])
    # The sloping top face, seen from slightly above: two triangles meeting at the peak.
    slope = _polygon([(top + 2.5, far_x), (top, peak_x), (top + 2.5, peak_x)])
    wedge = _polygon([(top + 2.6, left), (top + 2.6, right), (top, peak_x)])
    rgb = c.hsv((0.12, 0.16), (0.55, 0.85), (0.9, 1.0))
    c.paint_shaded(face, rgb, 0.2)
    c.paint(wedge | slope, c.add(_lighter(rgb, 0.4)))
    c.paint(face & (_Y > base - 0.9), c.add(_darker(rgb, 0.25)))
    holes = np.zeros(c.ink.shape, bool)
    for _ in range(3):
        hole = _ellipse(c.uniform(top + 3.5, base - 1.0), c.uniform(left + 1.5, right - 1.5),
                        c.uniform(0.5, 1.1), c.uniform(0.5, 1.2))
        holes |= hole & c.chance(0.75)
    c.paint(holes & face, c.add(_darker(rgb, 0.3)))


def _bread(c):
    """Loaf of bread with a darker base and baked slashes across the top."""
    cy, cx = c.uniform(8.5, 9.5), c.uniform(7.0, 8.0)
    ry, rx = c.uniform(3.0, 4.5), c.uniform(5.0, 6.5)
    power = c.uniform(2.5, 4.0)
    loaf = (np.abs((_Y - cy) / ry) ** power + np.abs((_X - cx) / rx) ** power) <= 1.0
    crust = c.hsv((0.06, 0.1), (0.5, 0.8), (0.65, 0.9))
    c.paint_shaded(loaf, crust)
    c.paint(loaf & (_Y > cy + ry * 0.4), c.add(_darker(crust, 0.25)))
    slash = c.uniform(1.2, 2.2)
    diagonal = np.abs(((_X - cx - (_Y - cy) * 0.8) / slash) % 2.0 - 1.0) < 0.25
    cuts = loaf & diagonal & (np.abs(_Y - cy + ry * 0.3) < 1.0)
    c.paint(cuts, c.add(_lighter(crust, 0.45)))


def _drumstick(c):
    """Roast drumstick: shaded meat with the bone and its knobbly end sticking out."""
    side = c.sign()
    cy = c.uniform(5.5, 7.0)
    cx = 7.5 - side * c.uniform(1.0, 2.0)
    angle = side * c.uniform(0.5, 0.9)
    bone_end_y, bone_end_x = cy + c.uniform(5.0, 6.5), cx + side * c.uniform(4.5, 5.5)
    bone_rgb = c.add(c.pick(_BONE))
    bone = _capsule(cy, cx, bone_end_y, bone_end_x, 0.7)
    knob = (_ellipse(bone_end_y + 0.8, bone_end_x - side * 0.6, 1.0, 1.0)
            | _ellipse(bone_end_y - 0.6, bone_end_x + side * 0.8, 1.0, 1.0))
    c.paint(bone | knob, bone_rgb)
    meat = _rotated_ellipse(cy, cx, c.uniform(3.0, 3.8), c.uniform(4.5, 5.4), angle)
    rgb = c.hsv((0.03, 0.09), (0.6, 0.85), (0.55, 0.85))
    c.paint_outlined(meat, c.add(rgb))
    c.paint(meat & ~_ellipse(cy - 0.9, cx - 0.6, 3.2, 4.4), c.add(_darker(rgb, 0.3)))
    c.paint(_ellipse(cy - 1.3, cx - 1.2, 0.7, 1.1) & meat, c.add(_lighter(rgb, 0.55)))


def _mushroom(c):
    """Toadstool: domed cap, usually spotted, on a pale stem."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    cap_y = c.uniform(6.5, 8.0)
    cap = _ellipse(cap_y, cx, c.uniform(4.5, 6.0), c.uniform(5.0, 6.6)) & (_Y <= cap_y)
    stem = _box(cap_y, c.uniform(12.8, 14.2), 0, c.snap(c.uniform(1.2, 2.3), cx), x=ax)
    c.paint_shaded(stem, c.pick(_BONE), 0.2)
    rgb = c.hsv((-0.05, 0.12), (0.55, 0.9), (0.55, 0.9))
    c.paint_shaded(cap, rgb, outlined=True)
    spots = (_ellipse(cap_y - 2.5, 0.0, 1.1, 1.1, x=ax) | _ellipse(cap_y - 1.0, c.uniform(3.0, 4.0), 0.9, 0.9, x=ax))
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
        c.paint(_capsule(low + dy - r, cx + dx, knot_y, knot_x, 0.5), stem_rgb)
    leaf = _rotated_ellipse(knot_y + 0.5, knot_x + 2.0, 0.9, 1.9, c.uniform(-0.3, 0.5))
    c.paint_outlined(leaf, c.add(c.hsv((0.25, 0.38), (0.6, 0.9), (0.55, 0.8))))
    for dx, dy in ((-spread, 0.0), (spread, -1.0)):
        cherry = _ellipse(low + dy, cx + dx, r, r)
        c.paint_shaded(cherry, rgb, outlined=True)
        c.paint(_ellipse(low + dy - 1.0, cx + dx - 1.0, 0.6, 0.6), c.add(_lighter(rgb, 0.7)))


# --------------------------------------------------------------------- spells

def _spell_colours(c):
    """Saturated outer/middle/core colours from one elemental hue."""
    hue = c.pick([(0.0, 0, 0), (0.55, 0, 0), (0.3, 0, 0), (0.78, 0, 0), (0.9, 0, 0)], 0)[:, 0]
    hue = hue + c.rng.uniform(-0.04, 0.04, c.n)
    outer = _hsv(hue, np.full(c.n, 0.9), np.full(c.n, 0.9))
    middle = _hsv(hue + 0.07, np.full(c.n, 0.75), np.full(c.n, 1.0))
    core = _hsv(hue + 0.12, np.full(c.n, 0.25), np.full(c.n, 1.0))
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
        head = _ellipse(hy, hx, r * scale + 0.2, r * scale + 0.2)
        tail = _capsule(hy, hx, hy - length * scale * dy, hx - length * scale * dx, r * scale, 0.3)
        c.paint(head | tail, c.add(rgb))
    sparks = np.zeros(c.ink.shape, bool)
    for side in (-1, 1):
        back = c.uniform(3.0, 6.0)
        off = side * c.uniform(2.5, 3.5)
        sy, sx = np.round(hy - back * dy + off * dx), np.round(hx - back * dx - off * dy)
        sparks |= (np.abs(_Y - sy) < 0.5) & (np.abs(_X - sx) < 0.5) & c.chance(0.7)
    c.paint_bare(sparks & (c.ink == 0), c.add(_darker(outer, 0.1)))


def _orb(c):
    """Glowing crystal ball, on a stand or floating among sparkles."""
    outer, middle, core = _spell_colours(c)
    cx = c.centre()
    ax = np.abs(_X - cx)
    cy = c.uniform(6.0, 7.5)
    r = c.uniform(3.2, 4.4)
    stand = c.chance(0.6)
    base = _polygon([(cy + r - 0.5, 2.0), (13.6, 3.5), (13.6, 0.0), (cy + r - 0.5, 0.0)], x=ax) & stand
    c.paint_shaded(base, c.pick(_METAL[2:] + _WOOD[:1]))
    orb = _ellipse(cy, cx, r, r)
    c.paint_outlined(orb, c.add(outer))
    c.paint(_ellipse(cy + 0.5, cx + 0.3, r * 0.7, r * 0.7), c.add(middle))
    c.paint(_ellipse(cy - r * 0.4, cx - r * 0.4, 1.0, 0.8), c.add(core))
    sparkle = c.add(_lighter(middle, 0.5))
    for sy, sx in ((2.0, 13.0), (12.0, 2.0), (1.5, 2.5)):
        sparkle_mask = (((np.abs(_Y - sy) < 0.5) & (np.abs(_X - sx) < 1.5))
                        | ((np.abs(_X - sx) < 0.5) & (np.abs(_Y - sy) < 1.5)))
        c.paint(sparkle_mask & c.chance(0.5) & ~stand, sparkle)


def _lightning(c):
    """Zig-zag lightning bolt with a bright core."""
    outer, middle, core = _spell_colours(c)
    lean = c.sign() * c.uniform(0.0, 1.5)
    w = c.uniform(1.6, 2.4)
    upper = _polygon([(1.0, 8.5 + lean + w), (8.5, 5.0 + w), (8.5, 5.0 - w * 0.6), (1.0, 8.5 + lean - w * 0.3)])
    bar = _box(6.8, 8.6, 5.0 - w * 0.6, 10.0 + w * 0.6)
    lower = _polygon([(6.8, 10.0 + w * 0.6), (14.5, 6.5 - lean), (6.8, 10.0 - w)])
    bolt = upper | bar | lower
    yellow = _hsv(c.rng.uniform(0.12, 0.16, c.n), np.full(c.n, 0.8), np.full(c.n, 1.0))
    bolt_rgb = np.where(c.chance(0.5)[:, 0], yellow, middle)
    c.paint_shaded(bolt, bolt_rgb, 0.2)
    c.paint(bolt & _neighbour(bolt, 0, 1) & _neighbour(bolt, 0, -1) & _neighbour(bolt, -1, 0)
            & _neighbour(bolt, 1, 0) & c.chance(0.6), c.add(core))


def _star_spell(c):
    """Four-, five- or six-pointed star with a glowing centre."""
    outer, middle, core = _spell_colours(c)
    gold = c.chance(0.5)
    rgb = np.where(gold[:, 0], c.hsv((0.12, 0.15), (0.75, 0.95), (0.95, 1.0)), middle)
    points = c.rng.choice([4, 5, 6], (c.n, 1, 1))
    cy, cx = c.uniform(7.0, 8.5), c.uniform(7.0, 8.0)
    r_out = c.uniform(5.5, 7.0)
    star = _star(cy, cx, r_out, r_out * c.uniform(0.3, 0.45), points, c.uniform(0.0, 0.1))
    c.paint_shaded(star, rgb, 0.25)
    c.paint(_star(cy, cx, r_out * 0.45, r_out * 0.2, points, 0.0) & star, c.add(_lighter(rgb, 0.6)))
    c.paint(_ellipse(cy, cx, 1.0, 1.0) & c.chance(0.4), _OUTLINE)


def _potion(c):
    """Round potion flask: coloured liquid, glassy shine, cork."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    cy = c.uniform(9.5, 10.5)
    r = c.uniform(3.6, 4.6)
    neck_w = c.snap(c.uniform(0.8, 1.6), cx)
    neck_top = c.uniform(2.5, 4.0)
    flask = _ellipse(cy, cx, r, r * c.uniform(0.95, 1.15)) | _box(neck_top + 1.5, cy - r + 1, 0, neck_w, x=ax)
    glass = c.add(c.hsv((0.45, 0.65), (0.03, 0.15), (0.9, 1.0)))
    c.paint(flask, glass)
    outer, middle, core = _spell_colours(c)
    liquid = flask & (_Y > cy - r * c.uniform(0.0, 0.5)) & _ellipse(cy, cx, r - 0.8, r)
    c.paint_shaded(liquid, middle, 0.3)
    bubble = (np.abs(_Y - (cy + 0.5)) < 0.5) & (np.abs(_X - cx - 1.5) < 0.5)
    c.paint(liquid & bubble & c.chance(0.6), c.add(core))
    c.paint(_ellipse(cy - r * 0.5, cx - r * 0.5, 1.0, 0.6) & flask, c.add(c.pick([(255, 255, 255)], 2)))
    cork = _box(neck_top, neck_top + 1.5, 0, neck_w + 0.5, x=ax)
    c.paint_outlined(cork, c.add(c.pick(_WOOD)))


def _crystal(c):
    """Faceted gem standing upright: light left facets, dark right ones."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    top, bottom = c.uniform(1.0, 2.5), c.uniform(13.0, 14.5)
    shoulder, hip = top + c.uniform(2.0, 4.0), bottom - c.uniform(2.5, 5.0)
    half = c.uniform(3.5, 5.5)
    gem = _polygon([(top, 0.0), (shoulder, half), (hip, half), (bottom, 0.0)], x=ax)
    outer, middle, core = _spell_colours(c)
    c.paint(gem, c.add(middle))
    c.paint(gem & (_X > cx), c.add(outer))
    c.paint(gem & (_X < cx) & (ax > half * 0.45), c.add(_lighter(middle, 0.45)))
    c.paint(gem & (_Y < shoulder) & (_X < cx) & (_X > cx - half * 0.5), c.add(core))


def _scroll(c):
    """Spell scroll: parchment with coloured runes between two rolls, maybe a seal."""
    cx = c.centre()
    ax = np.abs(_X - cx)
    top, bottom = c.uniform(1.5, 3.0), c.uniform(12.5, 14.0)
    half = c.snap(c.uniform(3.2, 4.6), cx)
    paper_rgb = c.hsv((0.1, 0.15), (0.15, 0.4), (0.9, 1.0))
    paper = _box(top + 1, bottom - 1, 0, half, x=ax)
    c.paint_shaded(paper, paper_rgb, 0.15)
    runes = paper & (np.round(_Y - top) % 2 == 1) & (_Y > top + 2) & (_Y < bottom - 2) & (ax < half - 1)
    runes &= (np.sin(_X * 2.7 + c.uniform(0, 6)) + np.sin(_Y * 1.3) > -0.3)
    outer, middle, core = _spell_colours(c)
    c.paint(runes, c.add(_darker(outer, 0.3)))
    rolls = _ellipse(top + 0.5, cx, 1.0, half + 1.0) | _ellipse(bottom - 0.5, cx, 1.0, half + 1.0)
    c.paint_outlined(rolls, c.add(_darker(paper_rgb, 0.2)))
    seal = _ellipse(bottom - 2.5, cx, 1.0, 1.0) & c.chance(0.5)
    c.paint_outlined(seal, c.add(outer))


# --------------------------------------------------------------- side-facing

def _walker(c, headwear):
    """Humanoid in profile facing right, mid-stride; mirrored for half of them."""
    head_cy, head_r = c.uniform(4.6, 5.4), c.uniform(3.0, 3.6)
    head_cx = c.uniform(7.6, 8.6)
    bx = head_cx - c.uniform(0.5, 1.2)  # torso axis
    kit = _Outfit(c)
    cape = _polygon([(8.8, bx - 0.5), (8.8, bx - 2.0), (13.5, bx - c.uniform(3.0, 4.0)), (13.5, bx)])
    c.paint_toned(cape & c.chance(0.3), kit.cloth)
    _walking_legs(c, kit, bx)
    torso = _box(8.5, 11.5, bx - 1.6, bx + 1.6)
    c.paint_toned(torso, kit.cloth)
    c.paint(torso & (np.abs(_Y - 11.0) < 0.5) & c.chance(0.5), kit.leather)
    c.paint_outlined(_box(9.0, 11.8, bx - 3.2, bx - 2.0) & c.chance(0.25), kit.leather)
    swing = c.uniform(-1.5, 2.0)
    c.paint(_capsule(9.3, bx - 0.2, 11.2, bx + swing, 0.7), kit.cloth[1])
    c.paint(_ellipse(11.6, bx + swing, 0.6, 0.6), kit.skin)

    head = _ellipse(head_cy, head_cx, head_r, head_r * c.uniform(0.95, 1.1))
    nose = _box(head_cy + 0.5, head_cy + 1.4, head_cx + head_r - 0.5, head_cx + head_r + 0.9)
    c.paint(head | nose, kit.skin)
    back = _X < head_cx - 0.3 + (_Y - head_cy) * c.uniform(-0.6, 0.3)
    if headwear == "hair":
        hair = head & (back | (_Y < head_cy - head_r * c.uniform(0.1, 0.5)))
        ponytail = _capsule(head_cy - 0.5, head_cx - head_r, head_cy + 2.5, head_cx - head_r - 1.5, 0.9)
        c.paint_toned(hair | (ponytail & c.chance(0.3)), kit.hair)
    elif headwear == "cap":
        c.paint(head & back & (_Y < head_cy + 1.5), kit.hair[0])
        cap = head & (_Y < head_cy - c.uniform(0.3, 1.0))
        brim = _box(head_cy - 1.5, head_cy - 0.7, head_cx, head_cx + head_r + c.uniform(0.8, 1.8))
        c.paint_toned(cap | brim, kit.accent)
    elif headwear == "helmet":
        plume = _capsule(head_cy - head_r - 0.3, head_cx - 0.5, head_cy - head_r + 1.5, head_cx - 3.5, 0.9)
        c.paint_outlined(plume & c.chance(0.5), kit.accent[0])
        visor = (_X > head_cx + 0.3) & (_Y > head_cy - 0.5) & (_Y < head_cy + 1.6)
        c.paint_toned(_ellipse(head_cy - 0.3, head_cx, head_r + 0.4, head_r + 0.3) & ~visor, kit.metal)
    elif headwear == "hood":
        face = (_X > head_cx + 0.2) & (_Y > head_cy - 1.0)
        c.paint_toned(_ellipse(head_cy - 0.2, head_cx - 0.4, head_r + 0.6, head_r + 0.5) & ~face, kit.cloth)
    eye = (np.abs(_X - np.round(head_cx + head_r * 0.55)) < 0.5) & (np.abs(_Y - np.round(head_cy + 0.4)) < 0.5)
    c.paint(eye, _OUTLINE)
    c.mirror(c.chance(0.5))


def _walking_legs(c, kit, bx):
    """Legs mid-stride; the far leg is drawn first and darker for depth."""
    stride = c.uniform(0.5, 2.5)
    for direction, trousers in ((-1, kit.trousers[1]), (1, kit.trousers[0])):
        foot_x = bx + direction * stride
        c.paint(_capsule(11.2, bx, 13.6, foot_x, 0.8), trousers)
        c.paint(_box(13.6, 14.4, foot_x - 0.8, foot_x + 1.6), kit.leather)


def _quadruped(c):
    """Four-legged critter in profile: dog, cat, pig, fox..."""
    fur = c.pick([(160, 110, 60), (230, 150, 60), (240, 240, 235), (90, 90, 95),
                  (240, 180, 180), (200, 170, 130)], 15)
    body_cy, body_cx = c.uniform(9.0, 10.0), c.uniform(6.0, 7.0)
    body_rx, body_ry = c.uniform(4.0, 5.0), c.uniform(2.2, 3.0)
    head_cy, head_cx = body_cy - c.uniform(2.5, 3.5), body_cx + body_rx - c.uniform(0.0, 1.0)
    head_r = c.uniform(2.2, 2.9)
    step = c.uniform(-1.0, 1.0)
    tail = _capsule(body_cy - 0.5, body_cx - body_rx + 0.5, body_cy - c.uniform(2.0, 4.5),
                    body_cx - body_rx - c.uniform(1.5, 2.5), 0.7, 0.5)
    coat = c.tone(fur, 0.25)
    c.paint(tail, coat[1])
    # Far legs first and in shadow; diagonal pairs swing together, as in a trot.
    for k, (x_off, slot) in enumerate(((-body_rx + 1.2, coat[1]), (body_rx - 1.8, coat[1]),
                                       (-body_rx + 2.4, coat[0]), (body_rx - 0.6, coat[0]))):
        swing = step if k % 2 == 0 else -step
        c.paint(_capsule(body_cy + 1.0, body_cx + x_off, 13.8, body_cx + x_off + swing, 0.6), slot)
    body = _ellipse(body_cy, body_cx, body_ry, body_rx)
    c.paint_toned(body, coat)
    ear = _polygon([(head_cy - head_r - c.uniform(1.2, 2.2), head_cx - c.uniform(0.0, 1.0)),
                    (head_cy - 1.0, head_cx - 1.8), (head_cy - 1.0, head_cx + 0.2)])
    head = _ellipse(head_cy, head_cx, head_r, head_r)
    snout = _ellipse(head_cy + 1.0, head_cx + head_r - 0.5, c.uniform(0.9, 1.3), c.uniform(1.3, 2.0))
    c.paint_toned(head | snout, coat)
    c.paint_outlined(ear, coat[1])
    nose_x = np.round(head_cx + head_r - 0.5 + c.uniform(0.8, 1.6))
    c.paint((np.abs(_X - nose_x) < 0.5) & (np.abs(_Y - np.round(head_cy + 0.5)) < 0.5) & snout, _OUTLINE)
    eye = (np.abs(_X - np.round(head_cx + 0.3)) < 0.5) & (np.abs(_Y - np.round(head_cy - 0.5)) < 0.5)
    c.paint(eye, _OUTLINE)
    spots = _ellipse(body_cy - 0.8, body_cx + c.uniform(-2.0, 1.0), 1.0, 1.5) & body & c.chance(0.4)
    c.paint(spots, c.add(_darker(fur, 0.4)))
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
        c.paint(_capsule(cy + r - 0.5, hip_x, 14.2, hip_x + direction * stride, 0.45), beak_rgb)
    tail = _polygon([(cy - 0.5, cx - r + 1.0), (cy - c.uniform(2.0, 4.0), cx - r - 2.0),
                     (cy + 1.5, cx - r - 1.5)])
    c.paint_shaded(tail, _darker(rgb, 0.2))
    body = _ellipse(cy, cx, r, r * c.uniform(1.0, 1.15))
    c.paint_shaded(body, rgb)
    belly = body & _ellipse(cy + r * 0.45, cx + r * 0.3, r * 0.55, r * 0.6)
    c.paint(belly, c.add(_lighter(rgb, 0.5)))
    wing = _rotated_ellipse(cy + 0.5, cx - 0.8, 1.3, c.uniform(2.2, 3.0), c.uniform(0.1, 0.5))
    c.paint_shaded(wing, _darker(rgb, 0.25), 0.25)
    beak = _polygon([(cy - 1.5, cx + r - 0.5), (cy - 0.4, cx + r + c.uniform(1.8, 3.0)),
                     (cy + 0.7, cx + r - 0.5)])
    c.paint(beak, beak_rgb)
    eye = (np.abs(_X - np.round(cx + r * 0.45)) < 0.5) & (np.abs(_Y - np.round(cy - r * 0.4)) < 0.5)
    c.paint(eye, _OUTLINE)
    crest = _capsule(cy - r + 0.5, cx, cy - r - c.uniform(1.0, 2.0), cx - 1.5, 0.6) & c.chance(0.4)
    c.paint(crest, c.add(_darker(rgb, 0.3)))
    c.mirror(c.chance(0.5))


# ------------------------------------------------------------ class registry

_SYMMETRIC_CLASSES = ("hero", "non-hero")  # shaded without a right-hand rim

_VARIANTS = (
    # (draw function, relative weight) per class, in CLASSES order.
    ((lambda c: _hero(c, "hair"), 3), (lambda c: _hero(c, "helmet"), 2), (lambda c: _hero(c, "hood"), 1),
     (lambda c: _hero(c, "wizard"), 1), (lambda c: _hero(c, "crown"), 1)),
    ((_slime, 2), (_ghost, 1), (_bat, 1), (_skull, 1), (_bug, 1), (_eyeball, 1)),
    ((_fruit, 2), (_banana, 1), (_carrot, 1), (_cheese, 1), (_bread, 1), (_drumstick, 1),
     (_mushroom, 1), (_cherries, 1)),
    ((_fireball, 1), (_orb, 1), (_lightning, 1), (_star_spell, 1), (_potion, 1), (_crystal, 1), (_scroll, 1)),
    ((lambda c: _walker(c, "hair"), 3), (lambda c: _walker(c, "cap"), 1), (lambda c: _walker(c, "helmet"), 1),
     (lambda c: _walker(c, "hood"), 1), (_quadruped, 1), (_bird, 1)),
)


def generate_sprites(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (n,16,16,3), labels int64 (n,)), classes balanced
    (n // 5 each, remainder spread), deterministic by seed.

    Labels index CLASSES and come shuffled; each class is split at random over
    its variants, and every variant is drawn as one vectorised batch.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for label, variants in enumerate(_VARIANTS):
        members = np.flatnonzero(labels == label)
        weights = np.array([w for _, w in variants], float)
        which = rng.choice(len(variants), len(members), p=weights / weights.sum())
        for index, (draw, _) in enumerate(variants):
            chosen = members[which == index]
            if len(chosen):
                batch = _Batch(len(chosen), rng, symmetric=CLASSES[label] in _SYMMETRIC_CLASSES)
                draw(batch)
                images[chosen] = batch.render()
    return images, labels


def preview_grid(images, labels, columns=8, scale=8, gap=2):
    """Tile sprites into one RGB array, a block of rows per class, upscaled."""
    tiles = []
    for label in range(len(CLASSES)):
        members = images[labels == label]
        rows = -(-len(members) // columns)
        block = np.full((rows * columns, SIZE, SIZE, 3), 128, np.uint8)
        block[:len(members)] = members
        tiles.append(block)
    tiles = np.concatenate(tiles)
    tiles = tiles.repeat(scale, 1).repeat(scale, 2)
    tiles = np.pad(tiles, ((0, 0), (gap, 0), (gap, 0), (0, 0)), constant_values=128)
    rows = len(tiles) // columns
    cell = SIZE * scale + gap
    grid = tiles.reshape(rows, columns, cell, cell, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * cell, columns * cell, 3)
    return np.pad(grid, ((0, gap), (0, gap), (0, 0)), constant_values=128)


def main(argv=None):
    import argparse
    import os

    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="number of sprites")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", default="docs/procedural_preview.png", help="output PNG path")
    args = parser.parse_args(argv)
    images, labels = generate_sprites(args.n, args.seed)
    os.makedirs(os.path.dirname(args.preview) or ".", exist_ok=True)
    Image.fromarray(preview_grid(images, labels)).save(args.preview)
    print(f"wrote {args.preview}: {args.n} sprites, seed {args.seed}")


if __name__ == "__main__":
    main()
