"""Series assembly on real DICOM files: ordering, rescale, geometry, gaps, duplicates, mixtures."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import make_volume

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.io.dicom_write import volume_to_datasets
from scanqc.series import load_series
from scanqc.volume import Volume


def _shuffle_names(folder: Path, seed: int = 1) -> None:
    """Rename files randomly so neither file order nor names give away the slice order."""
    files = sorted(folder.iterdir())
    names = [f"x{i:05d}" for i in range(len(files))]
    random.Random(seed).shuffle(names)
    for f, n in zip(files, names):
        f.rename(folder / n)


def test_shuffled_series_is_ordered_by_position_not_instance_number(write_series):
    vol = make_volume((20, 32, 32), modality="CT", seed=3)
    folder = write_series("ct", volume=vol)
    # Scramble InstanceNumber so only the geometry can order slices.
    for i, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = (i * 7) % 20 + 1
        ds.save_as(f)
    _shuffle_names(folder)
    (series,), _ = load_series(folder)
    assert series.volume.shape == (20, 32, 32)
    np.testing.assert_allclose(series.volume.array, vol.array, atol=0.51)  # 16-bit storage, 1 HU step
    assert series.volume.spacing == pytest.approx((2.5, 0.8, 0.8))
    assert series.volume.origin == pytest.approx(vol.origin)
    assert series.integrity == []


def test_rescale_slope_intercept_applied(write_series):
    folder = write_series("ct", shape=(3, 16, 16))
    f = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(f)
    raw = ds.pixel_array.astype(float)
    (series,), _ = load_series(folder)
    expected = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(series.volume.array[0], expected)
    assert series.volume.array.min() < -900  # HU, not stored values


def test_descending_positions_and_oblique_orientation(tmp_path):
    # Slices stored top to bottom with a tilted orientation: order must follow the normal.
    theta = np.deg2rad(20)
    direction = np.array([[0, 0, 1], [0, np.cos(theta), np.sin(theta)], [1, 0, 0]], float).T
    direction = np.stack([np.cross(direction[:, 2], direction[:, 1]), direction[:, 1], direction[:, 2]], axis=1)
    vol = Volume(make_volume((10, 16, 16), modality="MR").array, (3.0, 1.0, 1.0), (0, 0, 0), direction, "MR")
    folder = tmp_path / "obl"
    folder.mkdir()
    for i, ds in enumerate(reversed(volume_to_datasets(vol, "MR"))):
        pydicom.dcmwrite(folder / f"{i}.dcm", ds, enforce_file_format=True)
    (series,), _ = load_series(folder)
    np.testing.assert_allclose(series.volume.direction, direction, atol=1e-5)
    np.testing.assert_allclose(series.volume.array, vol.array, rtol=1e-3, atol=0.1)


def test_gap_is_reported_with_count_and_location(write_series):
    folder = write_series("ct", shape=(20, 16, 16))
    files = sorted(folder.iterdir())
    for f in files[8:11]:
        f.unlink()
    (series,), _ = load_series(folder)
    gaps = [i for i in series.integrity if i.kind == "gap"]
    assert len(gaps) == 1 and gaps[0].count == 3 and gaps[0].severity == "fail"
    assert "3 slice(s) missing" in gaps[0].message


def test_duplicate_positions_reported(write_series):
    folder = write_series("ct", shape=(10, 16, 16))
    f = sorted(folder.iterdir())[4]
    ds = pydicom.dcmread(f)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(folder / "dup.dcm")
    (series,), _ = load_series(folder)
    assert series.volume.shape[0] == 10
    assert [i.kind for i in series.integrity] == ["duplicate"]


def test_same_instance_sent_twice_is_not_a_duplicate(write_series):
    folder = write_series("ct", shape=(6, 16, 16))
    shutil.copy(sorted(folder.iterdir())[2], folder / "resent.dcm")
    (series,), _ = load_series(folder)
    assert series.volume.shape[0] == 6 and series.integrity == []
    assert any("same SOPInstanceUID" in n for n in series.notes)


def test_multi_echo_series_split_into_volumes(write_series, tmp_path):
    folder = write_series("mr", modality="MR", shape=(8, 16, 16), header={"EchoNumbers": 1})
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.EchoNumbers = 2
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"e2_{f.name}")
    (series,), _ = load_series(folder)
    assert series.volume.shape[0] == 8
    assert any(i.kind == "multi_volume" for i in series.integrity)


def test_mixed_orientation_keeps_largest_stack(write_series):
    folder = write_series("mr", modality="MR", shape=(12, 16, 16))
    loc = make_volume((2, 16, 16), modality="MR")
    loc.direction = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], float)  # sagittal localizer
    f0 = pydicom.dcmread(sorted(folder.iterdir())[0])
    for i, ds in enumerate(volume_to_datasets(loc, "MR", series_uid=f0.SeriesInstanceUID)):
        pydicom.dcmwrite(folder / f"loc{i}.dcm", ds, enforce_file_format=True)
    (series,), _ = load_series(folder)
    assert series.volume.shape[0] == 12
    assert [i.kind for i in series.integrity] == ["mixed_orientation"]


def test_folder_with_several_series_and_non_image_objects(write_series, pydicom_files):
    a = write_series("mix", modality="CT", shape=(5, 16, 16), header={"SeriesNumber": 2})
    b = write_series("b", modality="MR", shape=(7, 16, 16), header={"SeriesNumber": 1})
    for f in b.iterdir():
        f.rename(a / f"mr_{f.name}")
    for name in ("rtplan.dcm", "rtstruct.dcm", "test-SR.dcm"):
        shutil.copy(pydicom_files / name, a / name)
    series, notes = load_series(a)
    assert [(s.modality, s.volume.shape[0]) for s in series] == [("MR", 7), ("CT", 5)]  # by SeriesNumber
    joined = " ".join(notes)
    assert "RTPLAN" in joined and "RTSTRUCT" in joined and "SR" in joined


def _enhanced_mr(vol: Volume) -> pydicom.Dataset:
    """An Enhanced MR Image Storage multi-frame object with per-frame functional groups."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    single = volume_to_datasets(vol, "MR")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for kw in ("Modality", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns", "SamplesPerPixel",
               "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, kw, getattr(single[0], kw))
    ds.NumberOfFrames = len(single)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = single[0].PixelSpacing
    pm.SliceThickness = single[0].SliceThickness
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = single[0].ImageOrientationPatient
    shared.PlaneOrientationSequence = Sequence([po])
    timing = Dataset()
    timing.RepetitionTime = 2000
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    order = list(range(len(single)))[::-1]  # frames stored top-down
    for k in order:
        fg = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = single[k].ImagePositionPatient
        fg.PlanePositionSequence = Sequence([pp])
        pv = Dataset()
        pv.RescaleSlope = single[k].RescaleSlope
        pv.RescaleIntercept = single[k].RescaleIntercept
        fg.PixelValueTransformationSequence = Sequence([pv])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(single[k].PixelData for k in order)
    return ds


def test_enhanced_multiframe_mr(tmp_path):
    vol = make_volume((9, 16, 20), (1.5, 0.9, 0.9), "MR", seed=5)
    ds = _enhanced_mr(vol)
    path = tmp_path / "enhanced.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    (series,), _ = load_series(path)
    assert series.volume.shape == (9, 16, 20)
    assert series.volume.spacing == pytest.approx((1.5, 0.9, 0.9))
    np.testing.assert_allclose(series.volume.array, vol.array, rtol=1e-3, atol=0.1)
    assert float(series.get("RepetitionTime")) == 2000  # found inside the functional groups


def test_zip_input(write_series, tmp_path):
    import zipfile

    folder = write_series("ct", shape=(6, 16, 16))
    z = tmp_path / "series.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"export/{f.name}")
    (series,), _ = load_series(z)
    assert series.volume.shape == (6, 16, 16)


def test_nifti_from_nibabel_test_data():
    from nibabel.testing import data_path

    (series,), _ = load_series(Path(data_path) / "example4d.nii.gz")
    assert series.volume.shape == (24, 96, 128)  # (k, j, i) of a 128x96x24x2 EPI; first volume
    assert any("4D NIfTI" in n for n in series.notes)
    (anat,), _ = load_series(Path(data_path) / "anatomical.nii")
    assert anat.volume.shape == (25, 41, 33)


def test_nifti_roundtrip_keeps_geometry(tmp_path):
    from scanqc.io.nifti import write_nifti

    theta = np.deg2rad(10)
    rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    vol = Volume(make_volume((8, 12, 10), modality="MR").array, (2.0, 1.0, 1.5), (5, -3, 12), rot, "MR")
    path = write_nifti(vol, tmp_path / "v.nii.gz")
    (series,), _ = load_series(path)
    np.testing.assert_allclose(series.volume.affine, vol.affine, atol=1e-4)
    np.testing.assert_allclose(series.volume.array, vol.array)


def test_every_pydicom_bundled_file_loads_or_gives_coded_error(pydicom_files):
    # Glob the folder shipped in the wheel; pydicom's get_testdata_files would try the network.
    files = sorted(pydicom_files.iterdir())
    assert len(files) == 86
    outcomes: dict[str, int] = {}
    for f in files:
        try:
            series, _ = load_series(f)
        except ScanQCError as exc:
            assert isinstance(exc.code, ErrorCode) and exc.message
            outcomes[exc.code.value] = outcomes.get(exc.code.value, 0) + 1
            continue
        for s in series:
            assert (s.volume is not None) != (s.error is not None)
            key = "loaded" if s.error is None else s.error.code.value
            outcomes[key] = outcomes.get(key, 0) + 1
    assert outcomes["loaded"] >= 25  # MR_small in all its transfer syntaxes, CT_small, JPEG/J2K, ...
    assert {"NO_IMAGE_SERIES", "NOT_DICOM", "UNSUPPORTED_IMAGE"} <= set(outcomes)


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_compressed_transfer_syntaxes_decode_identically(pydicom_files, name):
    (ref,), _ = load_series(pydicom_files / "MR_small.dcm")
    (s,), _ = load_series(pydicom_files / name)
    np.testing.assert_array_equal(s.volume.array, ref.volume.array)


def test_a_folder_is_reduced_in_plane_while_read_and_gives_the_verdict_the_volume_gives(tmp_path, monkeypatch):
    """check_path makes the installed models' in-plane passes slice by slice as it reads (the abdominal
    localisation's 3 mm block means on a CT, as the DICOM receiver does): the same contrast-phase and coverage
    results, measured HU and distances as checking the volume read without them."""
    from scanqc.datasets.samples import abdomen_ct_sample

    import scanqc.pipeline as pipeline
    from scanqc.checks.ml import inplane_targets
    from scanqc.io.dicom_write import write_dicom_series
    from scanqc.pipeline import check_path, check_series
    from scanqc.preprocessing import BlockMeans

    vol, header, _ = abdomen_ct_sample(0, slice_mm=5.0, matrix=256, pixel_mm=1.4)
    write_dicom_series(vol, tmp_path / "ct", "CT", header=header)
    seen: list = []
    real = pipeline.load_series
    monkeypatch.setattr(pipeline, "load_series", lambda *a, **k: seen.append(k.get("inplane")) or real(*a, **k))
    (streamed,) = check_path(tmp_path / "ct")
    assert any(isinstance(p, BlockMeans) for p in seen[0]["CT"]) and seen[0] == inplane_targets()
    series = load_series(tmp_path / "ct", inplane=seen[0])[0][0]
    assert any(k[0] == "block_means.inplane" for k in series.scratch)  # made while reading
    plain = check_series(load_series(tmp_path / "ct")[0][0])
    for name in ("contrast_phase", "coverage"):
        a, b = streamed.checks[name].to_dict(), plain.checks[name].to_dict()
        assert a["status"] == b["status"] != "skipped" and a["message"] == b["message"]
        assert a.get("extra") == b.get("extra")
