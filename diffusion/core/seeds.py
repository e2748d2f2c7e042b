"""Seeds derived from a run's seed and a position in the run, so that a draw depends on where it happens, not on
how the process got there.

A training step's noise levels, noise, label dropout and flips are drawn from generators seeded by
``derive_seed(seed, ..., step, rank)``: a run resumed from a checkpoint at step k draws at step k + 1 exactly what
the uninterrupted run drew, whatever the two processes did in between (validation, FID, grids, a restart).
"""

from __future__ import annotations

import hashlib
import struct


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (the run's seed, a purpose tag, a step, a rank, ...): BLAKE2b of their 64-bit
    encodings, so nearby inputs (step 7 and 8, rank 0 and 1) give unrelated streams, unlike ``seed + step``."""
    data = b"".join(struct.pack("<q", int(p)) for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


# Purpose tags: two streams drawn at the same step and rank must not share a seed.
TRAIN_STEP = 1
DATA_FLIP = 2
