"""Process-wide thread settings for the runtime processes (``scanqc check``, the service, the bench).

scanqc gets its parallelism from threads of its own: the model checks of a series run concurrently, the service
checks several series at once and onnxruntime has its own pool. numpy's OpenBLAS adds one thread per core to
every matrix product on top of that; on the two shared cores scanqc is sized for, those threads spin waiting
for a core and a 200 x 512^2 CT's in-plane resampling took 0.14-0.3 s with two BLAS threads against 0.08 s
with one (contrast phase + coverage preprocessing 310 -> 170 ms, both measured under load). So the runtime
entry points ask for one BLAS thread; ``SCANQC_BLAS_THREADS`` overrides it (0 = leave the library default).
Importing scanqc as a library changes nothing.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("scanqc")

_limiter: object | None = None  # kept alive: threadpoolctl restores the old limit when it is collected
_BLAS_ENV = ("OPENBLAS_NUM_THREADS",)  # numpy's and scipy's; not MKL: torch (the bench's eager comparison) sets its own


def limit_blas_threads(default: int = 1) -> int | None:
    """Cap BLAS at ``SCANQC_BLAS_THREADS`` (else ``default``) threads for this process; the cap set, or None."""
    global _limiter
    raw = os.environ.get("SCANQC_BLAS_THREADS", "").strip()
    try:
        n = int(raw) if raw else int(default)
    except ValueError:
        log.warning("SCANQC_BLAS_THREADS=%r is not an integer; using %d", raw, default)
        n = int(default)
    if n <= 0:
        return None
    # threadpoolctl caps the BLAS libraries loaded *now*: called before numpy was imported (`scanqc check`, the
    # bench) it capped nothing, and scipy loads a second OpenBLAS of its own later. A library loaded after this
    # reads its thread count from the environment; those loaded already are capped below.
    for var in _BLAS_ENV:
        os.environ[var] = str(n)
    try:
        import numpy  # noqa: F401 - loads numpy's OpenBLAS, so that it is capped here
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; without it the library default stays
        return None
    _limiter = threadpool_limits(limits=n, user_api="blas")
    return n
