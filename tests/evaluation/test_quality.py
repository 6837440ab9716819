"""Quality-report breakdowns on hand-made rows: motion by artefact-to-noise ratio, with AUC against clean cases."""

from __future__ import annotations

import json

import numpy as np
from scanqc.evaluation.quality import _anr_group, breakdown


def _row(label: str, anr: float | None) -> dict[str, str]:
    art = {"kind": "none" if label == "none" else "rigid"}
    if anr is not None:
        art["artefact_to_noise"] = anr
    return {"label": label, "provenance": json.dumps({"artefact": art})}


def test_motion_breakdown_by_artefact_to_noise_scores_each_band_against_the_clean_cases():
    rows = [_row("none", None), _row("none", None), _row("none", None),
            _row("mild", 0.1), _row("mild", 0.2), _row("severe", 2.5), _row("mild", 0.8), _row("mild", None)]
    # Clean scores 0.2-0.4; the faint (ANR < 0.3) cases sit among them, the strong one above all.
    score = np.array([0.2, 0.3, 0.4, 0.25, 0.35, 0.9, 0.5, 0.6])
    outcomes = {"CNN": {"score": score, "flag_correct": np.array([1, 1, 1, 0, 0, 1, 1, 1], bool)}}
    table = {r["group"]: r for r in breakdown("motion", rows, outcomes, _anr_group)}
    assert set(table) == {"none", "ANR < 0.3", "ANR 0.6-1.2", "ANR >= 1.2"}  # no ratio recorded -> left out
    assert table["none"]["n"] == 3 and "CNN_auc_vs_clean" not in table["none"]
    assert table["ANR < 0.3"]["n"] == 2 and table["ANR < 0.3"]["CNN"] == 0.0
    # 0.25 beats 0.2 only; 0.35 beats 0.2 and 0.3: 3 of 6 pairs.
    assert table["ANR < 0.3"]["CNN_auc_vs_clean"] == 0.5
    assert table["ANR >= 1.2"]["CNN_auc_vs_clean"] == 1.0 and table["ANR 0.6-1.2"]["CNN_auc_vs_clean"] == 1.0
