"""The phantom generator: header conventions, CLI, coded errors (the measurements' truth is tested in
tests/checks/test_phantom.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scanqc.datasets.phantoms import KINDS, PhantomFaults, write_phantom

from scanqc.errors import ScanQCError
from scanqc.pipeline import check_path


def test_header_conventions_and_geometry(tmp_path: Path) -> None:
    files = write_phantom("mr_acr", tmp_path / "acr", serial="SN-9", station="VAN2", field_strength_t=3.0)
    ds = pydicom.dcmread(files[0])
    assert len(files) == 11 and float(ds.SliceThickness) == 5.0 and ds.Modality == "MR"
    assert str(ds.PatientName) == "PHANTOM^QA" and ds.DeviceSerialNumber == "SN-9" and ds.StationName == "VAN2"
    assert float(ds.MagneticFieldStrength) == 3.0 and "ACR" in ds.SeriesDescription
    # ACR axial series: 5 mm slices 10 mm apart (5 mm gaps)
    gap = np.subtract(pydicom.dcmread(files[1]).ImagePositionPatient, ds.ImagePositionPatient).astype(float)
    assert abs(np.linalg.norm(gap) - 10.0) < 1e-3


@pytest.mark.parametrize("bad", [{"kind": "ct_catphan"}, {"faults": PhantomFaults(slice_thickness_mm=0.0)}])
def test_bad_arguments_are_coded_errors(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ScanQCError) as exc:
        write_phantom(bad.get("kind", "ct_acr"), tmp_path / "x", bad.get("faults", PhantomFaults()))
    assert exc.value.code.value == "USAGE"


def test_cli_writes_a_failing_phantom(tmp_path: Path) -> None:
    from scanqc.datasets.cli import app
    from typer.testing import CliRunner

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["phantom", "ct_water", "--out", str(out), "--hu-offset", "12"])
    assert r.exit_code == 0, r.output
    [v] = check_path(out)
    assert v.kind == "phantom" and v.status == "fail" and "water CT number" in v.checks["phantom"].message
    r = CliRunner().invoke(app, ["phantom", "nope", "--out", str(out)])
    assert r.exit_code == 2 and "USAGE" in r.output and all(k in r.output for k in KINDS)
