"""Bad input gives a coded error verdict: never a traceback, never a hang."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pydicom
import pytest

from scanqc.limits import Limits
from scanqc.pipeline import check_path

pytestmark = pytest.mark.timeout(30)


def _error(path, **kw) -> dict:
    verdicts = check_path(path, **kw)
    assert len(verdicts) == 1
    v = verdicts[0].to_dict()
    assert v["status"] == "error" and v["checks"] == {}
    assert v["error"]["code"] and v["error"]["message"]
    return v["error"]


def test_missing_path(tmp_path):
    assert _error(tmp_path / "nope")["code"] == "NOT_FOUND"


def test_empty_folder_and_empty_file(tmp_path):
    (tmp_path / "empty").mkdir()
    assert _error(tmp_path / "empty")["code"] == "EMPTY_INPUT"
    (tmp_path / "zero.dcm").write_bytes(b"")
    assert _error(tmp_path / "zero.dcm")["code"] == "EMPTY_INPUT"


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    p = tmp_path / "random.dcm"
    p.write_bytes(os.urandom(2000 + 997 * seed))
    assert _error(p)["code"] in ("NOT_DICOM", "UNREADABLE")


def test_random_bytes_with_dicm_prefix(tmp_path):
    p = tmp_path / "fake.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + os.urandom(3000))
    assert _error(p)["code"] in ("NOT_DICOM", "UNREADABLE", "TRUNCATED")


def test_text_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("patient moved, please repeat\n" * 20)
    assert _error(p)["code"] == "NOT_DICOM"


def test_truncated_pixel_data(write_series):
    f = sorted(write_series("ct", shape=(1, 64, 64)).iterdir())[0]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 3000])
    assert _error(f)["code"] == "TRUNCATED"


@pytest.mark.parametrize("cut", [3000, 131072 - 10])  # a slice short; all but 10 bytes of the pixels
def test_truncated_pixel_data_left_in_the_file_by_the_parser(write_series, cut):
    """A 256^2 slice's 128 KiB of pixels are not read by the header parse (deferred, scanqc.io.dicom._DEFER_BYTES):
    a file that ends inside them must still be TRUNCATED, not a verdict on missing pixels or a crash."""
    f = sorted(write_series("ct", shape=(1, 256, 256)).iterdir())[0]
    data = f.read_bytes()
    assert len(data) > 131072
    f.write_bytes(data[: len(data) - cut])
    assert _error(f)["code"] == "TRUNCATED"


def test_a_large_private_header_element_in_a_zip_is_read_before_the_archive_is_gone(write_series, tmp_path):
    """Values over 64 KiB are left in the file by the header parse; the checks read the headers after a zip's
    extraction folder is deleted, so every such value but the pixels is read at once (a Siemens CSA header is
    often that large): the kept headers still hold it, and the verdict is whole."""
    from scanqc.series import load_series

    folder = write_series("ct", shape=(2, 32, 32))
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
        ds.add_new(0x00291020, "OB", b"SV10" + bytes(100_000))
        ds.add_new(0x00291030, "LT", "x")  # an element after the large one
        ds.save_as(f)
    archive = tmp_path / "ct.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    (v,) = check_path(archive)
    assert v.status != "error" and v.checks["deidentification"].status != "skipped", v.to_dict()
    (series,), _ = load_series(archive)
    assert not Path(series.files[0]).exists()  # the extraction folder is gone
    assert all(ds[0x00291020].value[:4] == b"SV10" and len(ds[0x00291020].value) == 100_004 for ds in series.headers)


def test_truncated_header(write_series):
    f = sorted(write_series("ct", shape=(1, 64, 64)).iterdir())[0]
    f.write_bytes(f.read_bytes()[:300])
    assert _error(f)["code"] in ("TRUNCATED", "UNREADABLE", "NOT_DICOM", "NO_PIXEL_DATA")


def test_one_truncated_slice_in_a_series_is_reported_not_fatal(write_series):
    folder = write_series("ct", shape=(10, 32, 32))
    f = sorted(folder.iterdir())[4]
    f.write_bytes(f.read_bytes()[:-500])
    (v,) = check_path(folder)
    assert v.status == "fail"
    assert "could not be decoded" in v.checks["integrity"].message


def test_absurd_dimensions_refused_before_decoding(write_series):
    f = sorted(write_series("ct", shape=(1, 16, 16)).iterdir())[0]
    ds = pydicom.dcmread(f)
    ds.Rows = 60000
    ds.Columns = 60000
    ds.NumberOfFrames = 1000
    ds.save_as(f)
    err = _error(f)
    assert err["code"] == "TOO_LARGE" and "60000" in err["message"]


def test_too_many_slices_for_configured_limits(write_series):
    folder = write_series("ct", shape=(12, 16, 16))
    err = _error(folder, limits=Limits(max_instances=10))
    assert err["code"] == "TOO_LARGE" and "12 slices" in err["message"]


def test_zip_path_traversal(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../etc/evil.dcm", b"x" * 10)
    err = _error(z)
    assert err["code"] == "ARCHIVE_UNSAFE" and "../../etc/evil.dcm" in err["message"]
    assert not (tmp_path.parent.parent / "etc" / "evil.dcm").exists()


def test_zip_absolute_member(tmp_path):
    z = tmp_path / "abs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("/tmp/scanqc_abs_member.dcm", b"x")
    assert _error(z)["code"] == "ARCHIVE_UNSAFE"


def test_zip_bomb(tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.dcm", b"\0" * (20 * 1024 * 1024))
    err = _error(z)
    assert err["code"] == "ARCHIVE_TOO_LARGE" and "zip bomb" in err["message"]


def test_zip_too_many_members(tmp_path):
    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(30):
            zf.writestr(f"f{i}.dcm", b"x")
    assert _error(z, limits=Limits(max_archive_members=20))["code"] == "ARCHIVE_TOO_LARGE"


def test_corrupt_zip(tmp_path):
    z = tmp_path / "broken.zip"
    z.write_bytes(b"PK\x03\x04" + os.urandom(500))
    assert _error(z)["code"] in ("ARCHIVE_CORRUPT", "NOT_DICOM")


def test_only_non_image_objects(tmp_path, pydicom_files):
    import shutil

    for name in ("rtplan.dcm", "test-SR.dcm"):
        shutil.copy(pydicom_files / name, tmp_path / name)
    err = _error(tmp_path)
    assert err["code"] == "NO_IMAGE_SERIES" and "RTPLAN" in err["message"]


def test_corrupt_nifti(tmp_path):
    p = tmp_path / "bad.nii.gz"
    p.write_bytes(os.urandom(400))
    assert _error(p)["code"] in ("UNREADABLE", "TRUNCATED")


def test_truncated_nifti(tmp_path):
    import numpy as np

    from scanqc.io.nifti import write_nifti
    from scanqc.volume import Volume

    p = write_nifti(Volume(np.ones((20, 20, 20), np.float32), (1, 1, 1)), tmp_path / "v.nii")
    p.write_bytes(p.read_bytes()[:2000])
    assert _error(p)["code"] in ("TRUNCATED", "UNREADABLE")


def test_directory_of_garbage_reports_first_problem(tmp_path: Path):
    for i in range(3):
        (tmp_path / f"{i}.bin").write_bytes(os.urandom(100))
    err = _error(tmp_path)
    assert err["code"] in ("NOT_DICOM", "UNREADABLE") and "3 file(s)" in err["message"]
