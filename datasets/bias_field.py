"""Smooth multiplicative intensity non-uniformity (MR receive-coil bias field).

Model as in TorchIO ``RandomBiasField`` (after Van Leemput et al., IEEE TMI 1999): the log of the
field is a polynomial of degree ``order`` in normalised coordinates ``[-1, 1]^3``;
``field = exp(sum_{i+j+k <= order} c_ijk z^i y^j x^k)``. :func:`apply_bias_field` is the
deterministic twin of :func:`random_bias_coefficients`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError


def _terms(order: int) -> list[tuple[int, int, int]]:
    return [(i, j, k) for i in range(order + 1) for j in range(order + 1 - i) for k in range(order + 1 - i - j)]


def bias_field(shape: Sequence[int], coefficients: Sequence[float], order: int = 3) -> np.ndarray:
    """The multiplicative field for ``coefficients`` (one per term of :func:`_terms`)."""
    terms = _terms(order)
    if len(coefficients) != len(terms):
        raise ScanQCError(ErrorCode.USAGE, f"order {order} needs {len(terms)} coefficients, got {len(coefficients)}")
    z, y, x = (np.linspace(-1, 1, int(n), dtype=np.float32) for n in shape)
    log = np.zeros(tuple(int(n) for n in shape), dtype=np.float32)
    for c, (i, j, k) in zip(coefficients, terms):
        if c:
            log += np.float32(c) * (z[:, None, None] ** i) * (y[None, :, None] ** j) * (x[None, None, :] ** k)
    return np.exp(log)


def apply_bias_field(array: np.ndarray, coefficients: Sequence[float], order: int = 3) -> np.ndarray:
    """Multiply by the field; all-zero coefficients return the input unchanged."""
    array = np.asarray(array, dtype=np.float32)
    if not any(coefficients):
        return array.copy()
    return array * bias_field(array.shape, coefficients, order)


def random_bias_coefficients(rng: np.random.Generator, order: int = 3,
                             strength: tuple[float, float] = (0.0, 0.3)) -> list[float]:
    """Coefficients with magnitudes in ``strength`` and random signs (constant term 0: scale is a
    separate transform)."""
    lo, hi = strength
    if not 0 <= lo <= hi:
        raise ScanQCError(ErrorCode.USAGE, f"bias strength range must satisfy 0 <= lo <= hi, got {strength!r}")
    n = len(_terms(order))
    c = rng.uniform(lo, hi, n) * rng.choice([-1.0, 1.0], n)
    c[0] = 0.0
    return [float(v) for v in c]
