"""Counter-based Rademacher probes, bit-for-bit those of ``csrc/math/rademacher.h``.

The Hutchinson ops never store their probes: the sign of probe ``k`` at flat element ``j``
of a ``(C, D)`` parameter block is a pure function of ``(seed, k, j)`` (DESIGN.md §3)::

    splitmix64(z): z += 0x9E3779B97F4A7C15
                   z  = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                   z  = (z ^ (z >> 27)) * 0x94D049BB133111EB
                   return z ^ (z >> 31)                       (uint64, wrapping)
    key_k   = splitmix64(splitmix64(seed) ^ k)                 (seed: int64 read as uint64)
    v_k[j]  = -1 if (splitmix64(key_k ^ (j >> 6)) >> (j & 63)) & 1 else +1,
              j = class * D + column           (one hash gives the signs of 64 elements)

with ``D = d + 1`` when the head has a bias (the bias is the last column) and ``D = d``
without. This module draws the same probes on the host with numpy ``uint64`` arithmetic
(which wraps on overflow), so ``hessalign_ext.reference`` can recompute a Hutchinson
estimate with exactly the probes the CPU and CUDA kernels used.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["splitmix64", "probe_key", "rademacher", "rademacher_probes"]

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _as_u64(x: int) -> np.ndarray:
    """A Python int (any sign) as a 0-d uint64 array, two's complement like a C++ cast."""
    return np.array(int(x) & _MASK64, dtype=np.uint64)


def splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer of a uint64 array, elementwise, wrapping like C++ ``uint64_t``."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def probe_key(seed: int, probe: int) -> int:
    """Key of probe ``probe`` under ``seed``: ``splitmix64(splitmix64(seed) ^ probe)``."""
    return int(splitmix64(splitmix64(_as_u64(seed)) ^ _as_u64(probe)))


def rademacher(
    seed: int,
    probe: int,
    num_classes: int,
    D: int,
    class_start: int = 0,
    num_class: int | None = None,
) -> torch.Tensor:
    """Probe ``probe`` of ``seed`` on classes ``class_start .. class_start+num_class-1``.

    Args:
        seed: the ops' ``seed`` argument (an int64; negative values wrap like a C++ cast).
        probe: probe index ``k`` in ``0 .. num_probes-1``.
        num_classes: C, the head's class count (only bounds ``class_start``/``num_class``).
        D: columns per class, ``d + 1`` with a bias, ``d`` without.
        class_start, num_class: a class tile; by default all ``num_classes`` classes.

    Returns:
        float64 CPU tensor of shape ``(num_class, D)`` holding +1.0 / -1.0.
    """
    if num_class is None:
        num_class = num_classes - class_start
    if not (0 <= class_start and class_start + num_class <= num_classes):
        raise ValueError(
            f"rademacher: classes {class_start}..{class_start + num_class} outside [0, {num_classes})"
        )
    key = _as_u64(probe_key(seed, probe))
    j = np.arange(class_start * D, (class_start + num_class) * D, dtype=np.uint64)
    bit = (splitmix64(key ^ (j >> np.uint64(6))) >> (j & np.uint64(63))) & np.uint64(1)
    signs = np.where(bit == 1, -1.0, 1.0).reshape(num_class, D)
    return torch.from_numpy(signs)


def rademacher_probes(seed: int, num_probes: int, num_classes: int, D: int) -> torch.Tensor:
    """Probes ``0 .. num_probes-1`` of ``seed`` stacked: float64 ``(num_probes, C, D)``."""
    return torch.stack([rademacher(seed, k, num_classes, D) for k in range(num_probes)])
