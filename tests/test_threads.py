"""The runtime's BLAS thread cap (scanqc/threads.py), measured in fresh processes (it is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = ("import numpy; from scanqc.threads import limit_blas_threads; from threadpoolctl import threadpool_info; "
          "print(limit_blas_threads(), max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'))")


def _run(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.pop("SCANQC_BLAS_THREADS", None)
    if env_value is not None:
        env["SCANQC_BLAS_THREADS"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.parametrize(("value", "cap", "threads"), [(None, "1", 1), ("2", "2", 2), ("abc", "1", 1)])
def test_blas_is_capped_as_configured(value: str | None, cap: str, threads: int) -> None:
    got_cap, got_threads = _run(value)
    assert got_cap == cap
    assert got_threads == min(threads, os.cpu_count() or threads)


def test_zero_leaves_the_library_default() -> None:
    got_cap, got_threads = _run("0")
    assert got_cap == "None" and got_threads == _default()


def _default() -> int:
    code = "import numpy; from threadpoolctl import threadpool_info; print(max(i['num_threads'] for i in " \
           "threadpool_info() if i['user_api'] == 'blas'))"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                              check=True).stdout)


def test_the_cap_holds_for_blas_loaded_after_it() -> None:
    # `scanqc check` and the bench cap BLAS before anything imported numpy, and scipy brings a second OpenBLAS
    # of its own later: both must start capped (uncapped, their spinning threads took a core from onnxruntime:
    # the segmentation network 55 -> 34 ms inside a CT check).
    code = ("import sys, json; from scanqc.threads import limit_blas_threads; assert 'numpy' not in sys.modules; "
            "limit_blas_threads(); import numpy, scipy.ndimage, scipy.linalg; "
            "from threadpoolctl import threadpool_info; "
            "print(json.dumps([i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']))")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.pop("SCANQC_BLAS_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         check=True).stdout
    threads = json.loads(out)
    assert threads and all(n == 1 for n in threads), threads
