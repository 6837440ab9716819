from __future__ import annotations

import pytest
from scanqc.datasets.manifest import COLUMNS, ManifestRow, read_manifest, write_manifest

from scanqc.errors import ErrorCode, ScanQCError


def _rows():
    return [
        ManifestRow("a", "cases/a.nii.gz", "MR", "motion", "mild", severity=0.3, body_region="brain",
                    provenance={"seed": 1}),
        ManifestRow("b", "/data/site1/ct", "CT", "coverage", "superior", missing=["superior"], body_region="abdomen",
                    split="val", provenance="real"),
        ManifestRow("c", "c", "CT", "contrast_phase", "arterial", phase="arterial", enhancement="suboptimal",
                    split="test"),
    ]


def test_roundtrip(tmp_path):
    p = write_manifest(_rows(), tmp_path / "manifest.csv")
    assert p.read_text().splitlines()[0] == ",".join(COLUMNS)
    back = read_manifest(p)
    assert back == _rows()
    assert back[0].resolve(tmp_path) == tmp_path / "cases/a.nii.gz"
    assert read_manifest(tmp_path) == back  # folder accepted


@pytest.mark.parametrize("column,value", [("label", "moderate"), ("modality", "PET"), ("split", "dev"),
                                          ("severity", "high"), ("missing", "left"), ("provenance", "{bad json")])
def test_bad_values_are_quoted(tmp_path, column, value):
    p = write_manifest(_rows(), tmp_path / "manifest.csv")
    lines = p.read_text().splitlines()
    cells = lines[1].split(",", len(COLUMNS) - 1)
    cells[COLUMNS.index(column)] = value if column != "provenance" else f'"{value}"'
    p.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(ScanQCError) as e:
        read_manifest(p)
    assert e.value.code == ErrorCode.USAGE and value[:5] in e.value.message and "line 2" in e.value.message


def test_missing_column_duplicate_and_not_found(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("case_id,path\nx,y\n")
    with pytest.raises(ScanQCError, match="missing column"):
        read_manifest(p)
    with pytest.raises(ScanQCError, match="duplicate case_id 'a'"):
        write_manifest([*_rows(), _rows()[0]], tmp_path / "d.csv")
    with pytest.raises(ScanQCError) as e:
        read_manifest(tmp_path / "nope.csv")
    assert e.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(ScanQCError, match="'full'"):
        ManifestRow("x", "p", "CT", "coverage", "full", missing=["inferior"]).validate()


def test_scan_cut_at_both_ends_can_be_labelled(tmp_path):
    from scanqc.models.evaluate import encode_row
    from scanqc.models.evaluate import read_manifest as read_rows

    row = ManifestRow("c", "ct/0103", "CT", "coverage", "both", missing=["superior", "inferior"],
                      body_region="abdomen", split="test")
    path = write_manifest([row], tmp_path / "manifest.csv")
    assert "superior;inferior" in path.read_text()
    (back,) = read_manifest(path)
    assert back.label == "both" and back.missing == ["superior", "inferior"]
    (rec,) = read_rows(path, "coverage", "all")
    assert encode_row("coverage", rec).tolist() == [1.0, 1.0]  # both ends cut: the "both" confusion row
    for label, missing, want in (("both", ["superior"], "superior;inferior for label 'both'"),
                                 ("superior", ["superior", "inferior"], "superior for label 'superior'")):
        with pytest.raises(ScanQCError, match=want):
            ManifestRow("x", "p", "CT", "coverage", label, missing=missing).validate()
