"""The contrast-phase HU classifier's training path: fit on measured features, export to ONNX with valid
MONAI-bundle metadata, and the serving registry loads what it wrote (the path a retrain takes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scanqc.training import abdomen_phase

from scanqc.checks.abdomen_anatomy import FEATURES
from scanqc.inference import PHASES


def _rows(n: int, seed: int) -> list[dict]:
    # Features that separate the phases the way the HU do (aorta / portal vein rise, then fall), with noise.
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        phase = PHASES[i % 4]
        level = {"non_contrast": 40.0, "arterial": 300.0, "portal_venous": 180.0, "delayed": 110.0}[phase]
        x = level + rng.normal(0, 15, len(FEATURES))
        x[1::2] = 60 + (i % 4) * 25 + rng.normal(0, 10, len(x[1::2]))
        rows.append({"phase": phase, "enhancement": "suboptimal" if i % 8 == 5 else "optimal",
                     "features": x.tolist(), "in_domain": True})
    return rows


def test_fit_export_writes_a_valid_bundle_the_registry_loads(tmp_path: Path) -> None:
    rows, val = _rows(80, 0), _rows(40, 1)
    clf = abdomen_phase.fit(rows)
    acc = abdomen_phase.accuracy(clf, val)
    assert acc["accuracy"] >= 0.9 and acc["n"] == 40
    info = {"command": "test", "_x": [r["features"] for r in rows]}
    folder = abdomen_phase.export(clf, tmp_path, "9.9.9", info, acc, "test export")
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["label_classes"] == "non_contrast, arterial, portal_venous, delayed, suboptimal"  # schema: a string
    assert meta["onnx"]["parity_max_abs_diff"] <= 1e-4 and meta["metrics"]["validation"]["n"] == 40

    from scanqc.models.registry import ModelRegistry

    model = ModelRegistry.for_folder(tmp_path).find("contrast_phase", "9.9.9")
    assert model.version == "9.9.9" and model.metadata["preprocessing"]["mode"] == "abdomen_hu"


def test_an_ensemble_of_small_networks_exports_with_parity_and_serves(tmp_path: Path) -> None:
    # --mlp: the phase from averaged one-hidden-layer ReLU networks; one ONNX graph (hidden units side by side),
    # the suboptimal head still a logistic regression; the registry serves it with the check's [N, 5] layout.
    rows, val = _rows(120, 0), _rows(40, 1)
    names = list(FEATURES[:6])
    clf = abdomen_phase.fit_mlp(rows, hidden=8, alpha=1.0, ensemble=3, names=names)
    assert len(clf["phase_mlp"]["b1"]) == 24 and "phase_coef" not in clf
    acc = abdomen_phase.accuracy(clf, val)
    assert acc["accuracy"] >= 0.9
    x = abdomen_phase.feature_matrix(rows, names)
    folder = abdomen_phase.export(clf, tmp_path, "9.9.8", {"command": "test", "_x": x.tolist()}, acc, "mlp export")
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["onnx"]["parity_max_abs_diff"] <= 1e-4 and "ReLU networks" in meta["network"]["class"]
    assert meta["preprocessing"]["features"] == names

    from scanqc.models.registry import ModelRegistry

    model = ModelRegistry.for_folder(tmp_path).find("contrast_phase", "9.9.8")
    got = model.run(x[:16].astype(np.float32).reshape(16, 1, 1, 1, -1))
    assert got.shape == (16, 5)
    np.testing.assert_allclose(got, abdomen_phase.logits_numpy(clf, x[:16]), atol=1e-3)
    # the averaged logits are the members' mean: not one member's (the ensemble is really there)
    assert not np.allclose(np.asarray(clf["phase_mlp"]["w2"])[:8] * 3, np.asarray(clf["phase_mlp"]["w2"])[8:16] * 3)
    # A measurement beyond the training range is clipped to it in the graph: far above the largest value seen gives
    # the logits of that value, which a ReLU network left alone would extrapolate from.
    hi = np.asarray(clf["clip"]["max"], np.float32)
    assert np.allclose(hi, x.max(0)) and np.allclose(clf["clip"]["min"], x.min(0))
    far, edge = x[:4].astype(np.float32).copy(), x[:4].astype(np.float32).copy()
    far[:, 0], edge[:, 0] = hi[0] + 5000.0, hi[0]
    run = lambda a: model.run(a.reshape(len(a), 1, 1, 1, -1))  # noqa: E731
    np.testing.assert_allclose(run(far), run(edge), atol=1e-5)
    unclipped = {k: v for k, v in clf.items() if k != "clip"}
    assert not np.allclose(abdomen_phase.logits_numpy(unclipped, far), run(edge), atol=1e-3)


def test_excretion_twins_give_delayed_rows_a_portal_venous_collecting_system() -> None:
    rows = _rows(40, 2)
    idx = {n: FEATURES.index(n) for n in (*abdomen_phase.CS_FEATURES, "kidney_p50", "aorta", "liver")}
    for i, r in enumerate(rows):  # urine in portal venous (some not found), excreted contrast when delayed
        f = r["features"]
        found = not (r["phase"] == "portal_venous" and i % 3 == 0)
        f[idx["collecting_system"]] = {"delayed": 300.0, "portal_venous": 10.0}.get(r["phase"], 20.0) if found \
            else f[idx["kidney_p50"]]
        f[idx["collecting_found"]] = float(found)
    out = abdomen_phase.excretion_twins(rows, seed=0)
    twins = [r for r in out if r.get("twin")]
    by_phase = {p: sum(r["phase"] == p for r in out) for p in PHASES}
    assert len(out) == 2 * len(rows) and len(set(by_phase.values())) == 1  # balance kept
    assert len(twins) == sum(r["phase"] == "delayed" for r in rows) and all(t["phase"] == "delayed" for t in twins)
    originals = [r for r in rows if r["phase"] == "delayed"]
    for t, r in zip(twins, originals):
        f, g = t["features"], r["features"]
        assert f[idx["aorta"]] == g[idx["aorta"]] and f[idx["liver"]] == g[idx["liver"]]  # vessels, organs kept
        assert g[idx["collecting_system"]] == 300.0 and f[idx["collecting_system"]] != 300.0  # no excretion now
        if f[idx["collecting_found"]]:
            assert f[idx["collecting_system"]] == 10.0  # a portal-venous row's urine
        else:  # a donor without a found collecting system: this row's own fallback, the parenchyma's median
            assert f[idx["collecting_system"]] == f[idx["kidney_p50"]] == g[idx["kidney_p50"]]
        assert np.isclose(f[idx["collecting_minus_kidney_p50"]], f[idx["collecting_system"]] - f[idx["kidney_p50"]])
    assert {bool(t["features"][idx["collecting_found"]]) for t in twins} == {True, False}
    assert all(r["features"][idx["collecting_system"]] == 300.0 for r in originals)  # inputs untouched
