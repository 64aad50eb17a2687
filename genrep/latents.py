"""Latent sampling that makes every sample a pure function of (seed, sample index).

Each sample gets its own counter-based random stream, so a shard's content does not depend on how
the work was split into batches, processes or restarts.
"""

from __future__ import annotations

import numpy as np


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random stream of sample `index` (`stream` separates independent uses of one sample)."""
    # Philox advances the low counter words; the high words hold (stream, index), so the streams
    # of different samples never overlap.
    return np.random.Generator(np.random.Philox(key=seed, counter=[0, 0, stream, index]))


def truncated_normal(
    rng: np.random.Generator,
    shape: int | tuple[int, ...],
    truncation: float | None,
    std: float = 1.0,
) -> np.ndarray:
    """Draws of N(0, std) restricted to |x| <= truncation * std (eq. 9-10 of the paper).

    `truncation=None` or `inf` gives an untruncated normal. Out-of-range values are redrawn, as in
    BigGAN's truncation trick; the result is float32.
    """
    x = rng.standard_normal(shape)
    if truncation is not None and np.isfinite(truncation):
        if truncation <= 0:
            raise ValueError(f"truncation must be > 0, got {truncation}")
        bad = np.abs(x) > truncation
        while bad.any():
            x[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(x) > truncation
    return (x * std).astype(np.float32)
