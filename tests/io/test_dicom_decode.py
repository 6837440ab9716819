"""The native-pixel fast path gives exactly pydicom's pixel_array."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from conftest import PYDICOM_TEST_FILES

import scanqc.io.dicom as dicom_io
from scanqc.errors import ScanQCError
from scanqc.io.dicom import _native_pixels, decode_pixels, read_file

NATIVE = []
for f in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
    try:
        ds = pydicom.dcmread(f)
    except Exception:
        continue
    if "PixelData" in ds and str(ds.file_meta.get("TransferSyntaxUID", "")) in (
            pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian):
        NATIVE.append(f.name)


@pytest.mark.parametrize("name", NATIVE)
def test_native_fast_path_matches_pixel_array(name):
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ref = ds.pixel_array
        except Exception:  # truncated or broken header: the fast path must not return pixels either
            try:
                assert _native_pixels(ds, name) is None
            except ScanQCError as e:
                assert e.code.value == "TRUNCATED"
            return
    fast = _native_pixels(ds, name)
    if fast is None:  # colour, odd bit depths: left to pydicom
        return
    np.testing.assert_array_equal(fast, ref.reshape(fast.shape))
    assert fast.dtype == ref.dtype


@pytest.mark.parametrize("name", NATIVE)
def test_pixels_left_in_the_file_are_read_as_pixel_array(name, monkeypatch):
    """read_file leaves large values in the file and the decoder reads the pixels straight from it: the same
    values as pydicom reading everything (the threshold lowered so that every pydicom sample takes that path)."""
    path = PYDICOM_TEST_FILES / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ref = pydicom.dcmread(path).pixel_array
        except Exception:
            ref = None
    monkeypatch.setattr(dicom_io, "_DEFER_BYTES", 64)
    try:
        ds = read_file(path, name)
        deferred = ds.get_item(0x7FE00010, keep_deferred=True)
        got = decode_pixels(ds, name, scratch=True)
    except ScanQCError as e:  # a broken sample: a coded error, never pixels pydicom would not give
        colour = ref is not None and int(pydicom.dcmread(path).get("SamplesPerPixel", 1) or 1) > 1
        assert ref is None or e.code.value in ("TRUNCATED", "DECODE_FAILED", "UNREADABLE") or (
            colour and e.code.value == "UNSUPPORTED_IMAGE")
        return
    assert ref is not None
    if deferred.length > 64 and _native_pixels(ds, name) is not None:
        assert deferred.value is None  # it really was left in the file
    np.testing.assert_array_equal(got, ref.reshape(got.shape))


def test_scratch_reads_reuse_one_buffer_and_plain_reads_do_not(write_series):
    files = sorted(write_series("ct", shape=(2, 256, 256)).iterdir())
    a, b = (decode_pixels(read_file(f), f.name, scratch=True) for f in files)
    assert np.shares_memory(a, b)  # the assembler copies each slice into its volume at once
    c, d = (decode_pixels(read_file(f), f.name) for f in files)
    assert not np.shares_memory(c, d)
    np.testing.assert_array_equal(d, pydicom.dcmread(files[1]).pixel_array[None])


@pytest.mark.parametrize(("signed", "stored", "values"), [
    (True, 12, [-2048, -1, 0, 2047]), (False, 12, [0, 1, 4095]), (True, 16, [-32768, 5, 32767])])
def test_bits_stored_masking_and_sign_extension_match_pydicom(signed, stored, values):
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.Rows, ds.Columns = 1, len(values)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, stored, stored - 1, int(signed)
    raw = np.array(values, dtype=np.int64) & ((1 << stored) - 1)
    raw = raw | (0xF000 if stored == 12 else 0)  # garbage in the unused high bits
    ds.PixelData = raw.astype("<u2").tobytes()
    np.testing.assert_array_equal(_native_pixels(ds, "x").ravel(), ds.pixel_array.ravel())
    np.testing.assert_array_equal(_native_pixels(ds, "x").ravel(), values)


def _geometry_slow(ds):
    """frame_geometries' values the way pydicom converts them (the reference for the raw fast path)."""
    def floats(v):
        try:
            return [float(x) for x in v]
        except (TypeError, ValueError):
            return None
    return (floats(ds.get("ImagePositionPatient")), floats(ds.get("ImageOrientationPatient")),
            floats(ds.get("PixelSpacing")), ds.get("SliceThickness"), ds.get("RescaleSlope"),
            ds.get("RescaleIntercept"))


def _convertible(names: list[str]) -> list[str]:
    """pydicom's test files whose geometry pydicom itself can read and convert (the reference)."""
    out = []
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _geometry_slow(pydicom.dcmread(PYDICOM_TEST_FILES / name))
        except Exception:
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("name", _convertible(sorted(f.name for f in PYDICOM_TEST_FILES.glob("*.dcm"))[:80]))
def test_raw_decimal_strings_equal_pydicoms_conversion(name):
    from scanqc.io.dicom import decimal_strings

    ds = pydicom.dcmread(PYDICOM_TEST_FILES / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _geometry_slow(pydicom.dcmread(PYDICOM_TEST_FILES / name))
    got = (decimal_strings(ds, "ImagePositionPatient"), decimal_strings(ds, "ImageOrientationPatient"),
           decimal_strings(ds, "PixelSpacing"), decimal_strings(ds, "SliceThickness", single=True),
           decimal_strings(ds, "RescaleSlope", single=True), decimal_strings(ds, "RescaleIntercept", single=True))
    for g, w in zip(got[:3], want[:3]):
        assert (None if g is None else [float(x) for x in g]) == w or (g in (None, "") and w in (None, []))
    for g, w in zip(got[3:], want[3:]):
        assert (g is None and w in (None, "")) or float(g) == float(w)


def test_malformed_decimal_string_still_fails_as_a_named_header_error(tmp_path):
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from scanqc.io.dicom import HeaderValueError, frame_geometries

    ds = pydicom.Dataset()
    ds.Rows, ds.Columns = 4, 4
    # A raw (undecoded) element as read from a file: not a number, so the fast path hands it to pydicom.
    ds._dict[Tag("SliceThickness")] = RawDataElement(Tag("SliceThickness"), "DS", 6, b"DOE^J ", 0, False, True)
    with pytest.raises(HeaderValueError) as exc:
        frame_geometries(ds)
    assert exc.value.keyword == "SliceThickness" and "DOE" not in str(exc.value)


def _raw(keyword: str, vr: str, value: bytes, little_endian: bool = True):
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    return RawDataElement(Tag(keyword), vr, len(value), value, 0, False, little_endian)


def test_cached_values_equal_pydicoms_and_depend_on_the_byte_order():
    # Rows stored as the same two bytes: 512 in a little-endian file, 2 in a big-endian one. The cache keys on
    # the raw bytes, so it must key on the byte order too.
    from scanqc.io.dicom import cached_value

    le, be, le2 = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    for ds, little in ((le, True), (be, False), (le2, True)):
        ds._dict[pydicom.tag.Tag("Rows")] = _raw("Rows", "US", b"\x00\x02", little)
        ds._dict[pydicom.tag.Tag("Modality")] = _raw("Modality", "CS", b"CT")
    assert cached_value(le, "Rows") == 512 == le.Rows
    assert cached_value(be, "Rows") == 2 == be.Rows
    assert cached_value(le2, "Rows") == 512 and cached_value(le2, "Modality") == "CT"
    assert cached_value(le2, "Columns", "absent") == "absent"


def test_cached_multi_values_are_never_shared_between_datasets():
    from scanqc.io.dicom import cached_value

    a, b = pydicom.Dataset(), pydicom.Dataset()
    for ds in (a, b):
        ds._dict[pydicom.tag.Tag("ImageType")] = _raw("ImageType", "CS", b"ORIGINAL\\PRIMARY\\AXIAL ")
    va, vb = cached_value(a, "ImageType"), cached_value(b, "ImageType")
    assert list(va) == list(vb) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    va.append("CHANGED")  # a caller changing its value must not change another dataset's
    assert list(cached_value(b, "ImageType")) == ["ORIGINAL", "PRIMARY", "AXIAL"] and va is not vb
