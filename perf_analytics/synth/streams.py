"""Named random streams: each purpose draws from its own, so one change cannot shift another.

A stream is keyed by the seed, a purpose tag and the indexes of what it serves (org,
asset, span), so an asset's profile is the same whatever the span, and adding an anomaly
to one asset leaves every other asset's noise untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

PROFILE, ORG, PLAN, NOISE, FLEET = 1, 2, 3, 4, 5
ROUTINE = PLAN + 100  # routine reboots and outages: apart from the base plan's stream


def stream(*key: int) -> np.random.Generator:
    """The random stream for `key` (seed, tag, indexes...)."""
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]


def digest(*parts: object, size: int) -> bytes:
    """`size` bytes that depend on `parts` only: for ids that must not move with numpy."""
    text = "/".join(str(p) for p in parts).encode()
    return hashlib.blake2b(text, digest_size=size, person=b"perf-fleet").digest()
