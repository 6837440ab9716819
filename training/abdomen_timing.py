"""Time the abdominal localisation + measurement (:func:`scanqc.checks.abdomen_anatomy.locate`) on a 200 x 512^2 CT.

A generated abdomen (:func:`scanqc.datasets.abdomen.make_abdomen`) zoomed to 200 x 512 x 512; after one warm-up
call (session creation), ``--runs`` calls with a fresh per-series cache, each stage timed with
``time.perf_counter``: working grid, network, measurement, and the whole ``locate``.

    python -m scanqc.training.abdomen_timing --runs 5
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from scanqc.datasets.abdomen import make_abdomen
    from scipy import ndimage

    from scanqc.checks import abdomen_seg as seg
    from scanqc.checks.abdomen_anatomy import locate
    from scanqc.volume import Volume

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args(argv)
    vol, _, _ = make_abdomen(np.random.default_rng(3), "portal_venous", spacing=(2.5, 2.5, 2.5), thickness=2.5)
    arr = vol.array
    f = (200 / arr.shape[0], 512 / arr.shape[1], 512 / arr.shape[2])
    big = Volume(ndimage.zoom(arr, f, order=1).astype(np.float32), tuple(s / k for s, k in zip(vol.spacing, f)),
                 vol.origin, modality="CT")
    locate(big, {})  # warm-up: onnxruntime session
    rows = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        g = seg.work_grid(big, {})
        t1 = time.perf_counter()
        seg.session().run(None, {"image": seg.network_input(g.image)})
        t2 = time.perf_counter()
        locate(big, {"abdomen_seg.grid": g})
        t3 = time.perf_counter()
        locate(big, {})
        t4 = time.perf_counter()
        rows.append([t1 - t0, t2 - t1, (t3 - t2) - (t2 - t1), t4 - t3])
    r = np.array(rows)
    print(json.dumps({"shape": list(big.array.shape), "spacing_mm": [round(s, 3) for s in big.spacing],
                      "runs": a.runs, "median_s": dict(zip(("grid", "network", "measurement", "total"),
                                                           np.round(np.median(r, 0), 3).tolist())),
                      "total_s": np.round(r[:, 3], 3).tolist()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
