"""`scanqc bench` pieces on a small series: stage breakdown, floor, model split, CLI memory, report. No timed
assertions: only that every figure is present and sane."""

from __future__ import annotations

import json

from scanqc.evaluation import benchmark as B

from scanqc.io.dicom_write import write_dicom_series
from scanqc.volume import Volume


def _ct(folder):
    import numpy as np

    arr = np.random.default_rng(0).normal(40, 20, (24, 48, 48)).astype("float32")
    write_dicom_series(Volume(arr, (2.5, 0.8, 0.8)), folder, "CT",
                       header={"SeriesDescription": "ABD PV", "BodyPartExamined": "ABDOMEN", "PatientName": ""})
    return folder


def test_bench_check_reports_stages_floor_and_models(tmp_path, stub_models):
    folder = _ct(tmp_path / "ct")
    res = B.bench_check(folder, "ct", runs=2, models=B.PinnedModels(stub_models))
    assert res["files"] == 24 and res["check_ms"]["n"] == 2
    for stage in ("read", "assemble_decode", "deidentification", "contrast_phase", "coverage"):
        assert res["stages_ms"][stage]["p50"] >= 0
    assert res["floor_ms"]["n"] == 2 and res["floor_ms"]["p50"] > 0 and res["floor_ratio_p50"] > 0
    assert res["floor_ratio_paired"] > 0 and (res["cpu_steal_pct"] is None or 0 <= res["cpu_steal_pct"] <= 100)
    for task in ("contrast_phase", "coverage"):
        m = res["models"][task]
        assert m["installed"] and m["preprocess_ms"]["n"] == 2 and m["onnxruntime_ms"]["p50"] > 0
    cli = B.bench_cli(folder, "ct")
    assert cli["exit"] in (0, 1) and cli["peak_rss_mb"] > 50
    full = {"command": "test", "date": "now", "machine": {"cpu": "x", "cores": 2, "loadavg_at_start": None},
            "ort_threads": 2, "series": {"ct": res}, "cli": {"ct": cli},
            "torch": {"coverage": {"version": "0.1.0", "input": [1, 2, 16, 16, 16], "parameters": 10,
                                   "torch_eager_ms": {"p50": 9.0}, "onnxruntime_ms": {"p50": 3.0},
                                   "speedup_p50": 3.0}},
            "service": {"payload_mb": {"ct": 1.0}, "modes": {"on": {
                "startup_s": 1, "idle_rss_mb": 1, "peak_rss_mb": 2, "inference_batches": {},
                "ct": [{"clients": 1, "requests": 4, "ok": 4, "errors": [], "series_per_s": 5.0,
                        "request_ms": {"p50": 1, "p95": 2}, "verdict_elapsed_ms": {"p50": 1}}]}}}}
    full["targets"] = B.targets(full)
    assert full["targets"]["coverage_ort_speedup"]["met"]
    assert full["targets"]["ct_service_series_per_s (on)"]["value"] == 5.0
    md = B.markdown(full)
    assert "full verdict" in md and "## Targets" in md and "pydicom" in md
    json.dumps(full)


def test_series_kinds_fit_the_slice_count(tmp_path):
    from scanqc.datasets.samples import abdomen_ct_sample

    vol, _, _ = abdomen_ct_sample(0, slice_mm=10.0, matrix=64, pixel_mm=6.0)
    assert B._fit_slices(vol, 40, -1000.0).shape[0] == 40
    assert B._fit_slices(vol, 20, -1000.0).shape[0] == 20
    assert B.pct([1.0, 2.0, 3.0], 50) == 2.0 and B.summary([1.0, 3.0])["p95"] == 2.9


def test_cpu_steal_is_the_stolen_share_of_all_cpu_time_between_two_readings(monkeypatch):
    from scanqc.evaluation.quality import CpuSteal

    before = "cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
    after = "cpu  400 0 150 1200 10 0 0 240 7 0\n"  # +300 user, +100 system, +400 idle, +200 steal (guest: ignored)
    readings = iter([CpuSteal.parse(before), CpuSteal.parse(after)])
    monkeypatch.setattr(CpuSteal, "_read", classmethod(lambda cls: next(readings)))
    assert CpuSteal().stop() == 20.0
    assert CpuSteal.parse("intr 1 2 3") is None
    monkeypatch.undo()
    got = CpuSteal().stop()
    assert got is None or 0.0 <= got <= 100.0
