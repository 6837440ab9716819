"""The header scanner (scanqc.io.dicom_scan) gives what pydicom's dcmread gives, or hands the file to it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import PYDICOM_TEST_FILES
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

import scanqc.io.dicom as dicom_io
from scanqc.errors import ScanQCError
from scanqc.io.dicom import decode_pixels, read_file
from scanqc.io.dicom_scan import scan_file

DEFER = 64 * 1024
_SKIP_ATTRS = ("_dict", "file_meta", "timestamp")


def _readable(path: Path) -> pydicom.FileDataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, defer_size=DEFER)
        except Exception:
            return None


def assert_same(ours: pydicom.FileDataset, ref: pydicom.FileDataset) -> None:
    """Same elements (tags, VRs, converted values, nested sequences), the same pixel data left in the file, same
    file meta, encodings and FileDataset attributes (file name, preamble, fileobj_type...)."""
    assert list(ours.keys()) == list(ref.keys())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in ref.keys():
            a, b = ours.get_item(tag, keep_deferred=True), ref.get_item(tag, keep_deferred=True)
            deferred = a.value is None and a.length > 0
            if tag in dicom_io.PIXEL_TAGS:  # other large values the scanner reads (read_file reads them anyway)
                assert deferred == (b.value is None and b.length > 0), tag
            if deferred:
                assert (a.value_tell, a.length, a.VR) == (b.value_tell, b.length, b.VR), tag
                continue
            assert ours[tag] == ref[tag], tag
            assert ours[tag].VR == ref[tag].VR, tag
            assert ours[tag].is_undefined_length == ref[tag].is_undefined_length, tag
    assert ours.file_meta == ref.file_meta
    assert ours.original_encoding == ref.original_encoding
    assert ours._character_set == ref._character_set
    assert ({k: v for k, v in vars(ours).items() if k not in _SKIP_ATTRS}
            == {k: v for k, v in vars(ref).items() if k not in _SKIP_ATTRS})


FILES = [p for p in sorted(PYDICOM_TEST_FILES.glob("*.dcm")) if _readable(p) is not None]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_scanned_or_handed_to_pydicom_never_different(path):
    ours = scan_file(path, DEFER)
    if ours is not None:
        assert_same(ours, _readable(path))


def test_the_uncompressed_files_are_scanned_and_the_others_handed_over():
    scanned = {p.name for p in FILES if scan_file(p, DEFER) is not None}
    assert len(scanned) >= 15
    assert {"CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "liver_1frame.dcm"} <= scanned
    for name in ("MR_small_bigendian.dcm", "JPEG2000.dcm", "image_dfl.dcm", "MR_truncated.dcm",
                 "rtplan_truncated.dcm", "no_meta.dcm"):
        assert scan_file(PYDICOM_TEST_FILES / name, DEFER) is None, name


def _item(i: int, nested: bool) -> Dataset:
    it = Dataset()
    it.CodeValue, it.CodeMeaning = f"C{i}", "é meaning"  # a non-ASCII value under the file's character set
    if nested:
        inner = Dataset()
        inner.ReferencedSOPInstanceUID = f"1.2.3.{i}"
        it.ReferencedImageSequence = Sequence([inner])
        it["ReferencedImageSequence"].is_undefined_length = True
        inner.is_undefined_length_sequence_item = True
    it.is_undefined_length_sequence_item = True
    return it


def _write(path: Path, syntax: str, *, private_bytes: int = 0, trailing: bool = False,
           rows: int = 256) -> Path:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = pydicom.uid.CTImageStorage, "1.2.3.4.5"
    ds.Modality, ds.SeriesInstanceUID = "CT", "1.2.3.4"
    ds.ProcedureCodeSequence = Sequence([_item(0, True), _item(1, False)])
    ds["ProcedureCodeSequence"].is_undefined_length = True
    ds.AnatomicRegionSequence = Sequence([_item(2, False)])  # defined length
    ds.ImagePositionPatient, ds.PixelSpacing = [0.0, -12.5, 3.25], [0.7, 0.7]
    if private_bytes:
        block = ds.private_block(0x0029, "SCANQC TEST", create=True)
        block.add_new(0x10, "OB", bytes(range(256)) * (private_bytes // 256))
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = (np.arange(rows * rows, dtype=np.int16) % 2000 - 1000).tobytes()
    if trailing:
        ds.DataSetTrailingPadding = b"\0" * 16
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("private_bytes, trailing", [(0, False), (100_000, True), (40_000, False)])
def test_sequences_long_headers_and_elements_after_the_pixels(tmp_path, syntax, private_bytes, trailing):
    """Undefined-length sequences and items (nested), a header longer than the first read (the buffer grows),
    elements after the pixel data (read past the deferred pixels)."""
    path = _write(tmp_path / "x.dcm", syntax, private_bytes=private_bytes, trailing=trailing)
    ours = scan_file(path, DEFER)
    assert ours is not None
    assert_same(ours, _readable(path))
    assert ours.ProcedureCodeSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.0"
    assert ours.ProcedureCodeSequence[1].CodeMeaning == "é meaning"
    assert ours["ProcedureCodeSequence"].is_undefined_length  # as written: delimited, not sized
    assert ours.get_item(0x7FE00010, keep_deferred=True).value is None  # 128 KB of pixels left in the file
    np.testing.assert_array_equal(decode_pixels(ours, "x")[0], _readable(path).pixel_array)


def test_small_pixel_data_is_read_like_pydicom_reads_it(tmp_path):
    path = _write(tmp_path / "x.dcm", ExplicitVRLittleEndian, rows=64)  # 8 KB: under the defer size
    ours = scan_file(path, DEFER)
    assert ours.get_item(0x7FE00010, keep_deferred=True).value is not None
    assert_same(ours, _readable(path))


def test_read_file_parses_common_files_without_dcmread(tmp_path, monkeypatch):
    """The fast path is the one taken (dcmread is not called) and a compressed file still reads via pydicom."""
    path = _write(tmp_path / "x.dcm", ExplicitVRLittleEndian)

    def no_dcmread(*a, **k):
        raise AssertionError("dcmread called")

    monkeypatch.setattr(dicom_io.pydicom, "dcmread", no_dcmread)
    assert read_file(path).SOPInstanceUID == "1.2.3.4.5"
    with pytest.raises(ScanQCError, match="dcmread called"):
        read_file(PYDICOM_TEST_FILES / "JPEG2000.dcm")


@pytest.mark.parametrize("cut", [500, 2000, 80_000])
def test_truncated_files_get_pydicoms_coded_errors(tmp_path, cut):
    """Cut inside the header (the scanner hands over, pydicom's diagnosis) or inside the pixels (TRUNCATED)."""
    data = _write(tmp_path / "x.dcm", ExplicitVRLittleEndian).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:cut])
    try:
        ds = read_file(tmp_path / "cut.dcm")
        decode_pixels(ds, "cut")
    except ScanQCError as e:
        assert e.code.value in ("TRUNCATED", "UNREADABLE", "NOT_DICOM", "DECODE_FAILED")
    else:
        raise AssertionError("a truncated file decoded")


def test_garbage_after_the_preamble_is_not_a_crash(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(30):
        data = b"\0" * 128 + b"DICM" + rng.integers(0, 256, int(rng.integers(8, 4000)), dtype=np.uint8).tobytes()
        (tmp_path / f"g{i}.dcm").write_bytes(data)
        try:
            read_file(tmp_path / f"g{i}.dcm")
        except ScanQCError as e:
            assert e.code.value in ("TRUNCATED", "UNREADABLE", "NOT_DICOM")


def _converted(ds: pydicom.Dataset) -> list[tuple[int, object]]:
    """Every element's converted value (as text, nested sequences included; other large values pydicom left in the
    file read from it), or the type of the error that converting it raised: corrupted values must fail on the
    scanner's dataset exactly as on pydicom's."""
    out: list[tuple[int, object]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in ds.keys():
            if tag in dicom_io.PIXEL_TAGS:  # left in the file (or not) alike: compared by place and size
                elem = ds.get_item(tag, keep_deferred=True)
                out.append((tag, (elem.length, elem.value_tell, elem.value is None)))
                continue
            try:
                out.append((tag, (ds[tag].VR, str(ds[tag].value))))
            except Exception as e:  # pydicom raises many types on malformed values
                out.append((tag, type(e)))
    return out


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_mutated_headers_scan_like_dcmread_or_are_handed_over(tmp_path, syntax):
    """Random bytes of the header changed (tags, VRs, lengths, values, sequence items): what the scanner
    returns converts, and fails to convert, as pydicom's dataset does; nothing escapes read_file uncoded."""
    base = _write(tmp_path / "base.dcm", syntax).read_bytes()
    end = base.find(b"\xe0\x7f\x10\x00") + 12
    rng = np.random.default_rng(7)
    scanned = 0
    for i in range(150):
        b = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(132, end))] = int(rng.integers(0, 256))
        path = tmp_path / f"m{i}.dcm"
        path.write_bytes(bytes(b))
        ours, ref = scan_file(path, DEFER), _readable(path)
        if ours is not None:
            scanned += 1
            assert ref is not None, i
            assert _converted(ours) == _converted(ref), i
        try:
            read_file(path)
        except ScanQCError:
            pass
    assert scanned >= 50  # most single-byte changes keep the file in the scanner's case
