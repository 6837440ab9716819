"""SeriesAssembler: fed one instance at a time, it builds exactly what load_series builds from the files."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from scanqc.ingest.assembler import SeriesAssembler
from scanqc.io.dicom_write import volume_to_datasets, write_dicom_series
from scanqc.series import Series, load_series
from scanqc.volume import Volume


def _volume(n: int = 12, size: int = 32, modality: str = "CT", seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.normal(40, 20, (n, size, size)).astype(np.float32)
    return Volume(arr, (2.0, 0.7, 0.7), (-11.0, -11.0, 5.0), modality=modality)


def _roundtrip(ds: Dataset) -> Dataset:
    """What the receiver holds: the dataset decoded from the bytes as sent (file meta attached)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def _same(a: Series, b: Series) -> None:
    assert (a.series_uid, a.modality, a.n_instances, a.source) == (b.series_uid, b.modality, b.n_instances, b.source)
    assert (a.error is None) == (b.error is None)
    if a.error is not None:
        assert (a.error.code, a.error.message) == (b.error.code, b.error.message)
        return
    assert a.volume is not None and b.volume is not None
    assert a.volume.array.dtype == b.volume.array.dtype == np.float32
    assert np.array_equal(a.volume.array, b.volume.array)
    assert a.volume.spacing == b.volume.spacing and a.volume.origin == b.volume.origin
    assert np.array_equal(a.volume.direction, b.volume.direction)
    assert [i.to_dict() for i in a.integrity] == [i.to_dict() for i in b.integrity]
    assert a.notes == b.notes
    assert [h.SOPInstanceUID for h in a.headers] == [h.SOPInstanceUID for h in b.headers]
    assert all("PixelData" not in h for h in a.headers)


def _assemble(dss: list[Dataset], order: list[int] | None = None) -> Series:
    asm = SeriesAssembler("pushed")
    for i in order if order is not None else range(len(dss)):
        asm.add(_roundtrip(dss[i]), f"{dss[i].SOPInstanceUID}.dcm")
    return asm.finish()


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_streamed_equals_load_series_in_any_arrival_order(tmp_path: Path, modality: str) -> None:
    vol = _volume(modality=modality)
    write_dicom_series(vol, tmp_path / "s", modality)
    (from_files,), _ = load_series(tmp_path / "s")
    dss = [pydicom.dcmread(p) for p in sorted((tmp_path / "s").iterdir())]
    order = list(range(len(dss)))
    random.Random(3).shuffle(order)  # a router may forward out of order
    streamed = _assemble(dss, order)
    for s in (streamed, from_files):
        s.input = "x"
    _same(streamed, from_files)
    assert np.allclose(streamed.volume.array, vol.array, atol=1.0)  # type: ignore[union-attr]


def test_gap_duplicate_and_localizer_are_reported_like_load_series(tmp_path: Path) -> None:
    vol = _volume(n=10)
    dss = volume_to_datasets(vol, "CT")
    del dss[4]  # a slice missing in the middle
    dup = _roundtrip(dss[2])
    dup.SOPInstanceUID = pydicom.uid.generate_uid()  # same position, another instance
    dup.InstanceNumber = 99
    loc = _roundtrip(dss[0])
    loc.SOPInstanceUID = pydicom.uid.generate_uid()
    loc.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal localizer inside the series
    resend = _roundtrip(dss[1])  # the same SOP instance sent twice
    allds = [*dss, dup, loc, resend]
    folder = tmp_path / "f"
    folder.mkdir()
    for i, d in enumerate(allds):
        d.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    (from_files,), _ = load_series(folder)
    streamed = _assemble([pydicom.dcmread(folder / f"{i:03d}.dcm") for i in range(len(allds))])
    for s in (streamed, from_files):
        s.input = "x"
    _same(streamed, from_files)
    kinds = {i.kind for i in streamed.integrity}
    assert {"gap", "duplicate", "mixed_orientation"} <= kinds
    assert any("duplicate instance" in n for n in streamed.notes)


def test_stack_state_tracks_gaps_while_arriving() -> None:
    dss = volume_to_datasets(_volume(n=8), "CT")
    asm = SeriesAssembler("pushed")
    for d in dss[:3]:
        asm.add(_roundtrip(d))
    st = asm.stack()
    assert st.complete and st.missing == 0 and len(st.positions) == 3
    asm.add(_roundtrip(dss[6]))  # slices 3-5 not there yet
    st = asm.stack()
    assert not st.complete and st.missing == 3
    for d in dss[3:6]:
        asm.add(_roundtrip(d))
    assert asm.add(_roundtrip(dss[0])) == "duplicate"
    st = asm.stack()
    assert st.complete and len(st.positions) == 7 and asm.n_instances == 7


def test_finish_twice_gives_the_growing_series() -> None:
    dss = volume_to_datasets(_volume(n=6), "CT")
    asm = SeriesAssembler("pushed")
    for d in dss[:4]:
        asm.add(_roundtrip(d))
    first = asm.finish()
    for d in dss[4:]:
        asm.add(_roundtrip(d))
    second = asm.finish()
    assert first.volume.shape[0] == 4 and second.volume.shape[0] == 6  # type: ignore[union-attr]
    assert np.array_equal(second.volume.array[:4], first.volume.array)  # type: ignore[union-attr]


def test_bad_instance_becomes_the_series_error_not_an_exception(tmp_path: Path) -> None:
    dss = volume_to_datasets(_volume(n=4), "CT")
    bad = _roundtrip(dss[2])
    del bad.PixelData
    folder = tmp_path / "b"
    folder.mkdir()
    for i, d in enumerate([_roundtrip(dss[0]), _roundtrip(dss[1]), bad, _roundtrip(dss[3])]):
        d.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    (from_files,), _ = load_series(folder)
    asm = SeriesAssembler("pushed")
    results = [asm.add(pydicom.dcmread(folder / f"{i}.dcm"), folder / f"{i}.dcm") for i in range(4)]
    assert results == ["added", "added", "error", "error"]
    streamed = asm.finish()
    assert streamed.error is not None and streamed.error.code.value == "NO_PIXEL_DATA"
    streamed.input = from_files.input = "x"
    _same(streamed, from_files)


def test_incremental_stack_equals_the_pure_geometry_of_all_frames() -> None:
    from scanqc.ingest.assembler import stack_state

    dss = volume_to_datasets(_volume(n=9), "CT")
    loc = _roundtrip(dss[0])
    loc.SOPInstanceUID = pydicom.uid.generate_uid()
    loc.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    order = [dss[i] for i in (4, 0, 8, 2)] + [loc] + [dss[i] for i in (1, 3, 5, 6, 7)]
    asm = SeriesAssembler("pushed")
    for d in order:
        asm.add(_roundtrip(d))
        assert asm.stack() == stack_state(asm._frames)
    assert asm.stack().complete and len(asm.stack().positions) == 9


def test_slice_block_growth_and_a_provisional_volume_unchanged_by_later_arrivals() -> None:
    # Slices are written into one growing block and an in-order volume is a view of it: a verdict's volume
    # must not change when more instances arrive (or the block grows) after it was built.
    vol = _volume(n=12)
    dss = [_roundtrip(d) for d in volume_to_datasets(vol, "CT")]
    asm = SeriesAssembler("s", expected_frames=2)  # grows 2 -> 4 -> 8 -> 16 while instances arrive
    for ds in dss[:5]:
        assert asm.add(ds) == "added"
    early = asm.finish()
    assert early.volume is not None
    snapshot = early.volume.array.copy()
    for ds in reversed(dss[5:]):  # the rest in reverse: the final stack is gathered, not a view
        assert asm.add(ds) == "added"
    final = asm.finish()
    assert np.array_equal(early.volume.array, snapshot)
    assert final.volume is not None and final.volume.shape == (12, 32, 32)
    assert np.allclose(final.volume.array, vol.array, atol=1.0)


@pytest.mark.parametrize("flipped", [False, True])
def test_inplane_pass_made_on_arrival_is_what_resample_fit_would_compute(flipped: bool) -> None:
    # The receiver resamples each axial slice onto the models' in-plane grids as it arrives; after the last
    # instance the checks find that pass in the cache under resample_fit's own key and only the slices remain.
    from scanqc.preprocessing import canonicalize, inplane_key, resample_fit

    vol = _volume(n=9, size=40)
    if flipped:  # rows running anterior, columns running right: the canonical view flips both in-plane axes
        vol.direction = np.stack([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]], axis=1)
    dss = [_roundtrip(d) for d in volume_to_datasets(vol, "CT")]
    random.Random(1).shuffle(dss)
    asm = SeriesAssembler("s", inplane={"CT": ((12, 10),), "MR": ((7, 7),)})
    for ds in dss:
        asm.add(ds)
    series = asm.finish()
    assert series.volume is not None
    arr, _ = canonicalize(series.volume)
    key = inplane_key(arr, (12, 10))
    assert list(series.scratch) == [key]  # the CT grid only, under the key resample_fit looks up
    fresh = resample_fit(arr, (5, 12, 10))
    assert np.allclose(resample_fit(arr, (5, 12, 10), cache=dict(series.scratch)), fresh, atol=1e-3)
    assert not np.allclose(resample_fit(arr[:, ::-1], (5, 12, 10)), fresh, atol=1e-3)  # orientation matters
    plain = SeriesAssembler("s")
    for ds in dss:
        plain.add(ds)
    assert plain.finish().scratch == {}


@pytest.mark.parametrize("flipped", [False, True])
def test_block_means_made_on_arrival_give_the_abdominal_work_grid_unchanged(flipped: bool) -> None:
    # The abdominal localisation's detail grid starts with in-plane block means (3 mm: 4 x 4 pixels of 0.7 mm,
    # and a partial last block: 41 = 10 * 4 + 1). Made slice by slice on arrival, in any arrival order, they
    # land under the key work_grid looks up and give the very same detail and working grids.
    from scanqc.checks import abdomen_seg
    from scanqc.preprocessing import BlockMeans, block_means_key, canonicalize

    vol = _volume(n=10, size=41)
    if flipped:
        vol.direction = np.stack([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]], axis=1)
    dss = [_roundtrip(d) for d in volume_to_datasets(vol, "CT")]
    random.Random(2).shuffle(dss)
    asm = SeriesAssembler("s", inplane={"CT": (BlockMeans(abdomen_seg.DETAIL_MM),)})
    for ds in dss:
        asm.add(ds)
    series = asm.finish()
    assert series.volume is not None
    arr, _ = canonicalize(series.volume)
    assert list(series.scratch) == [block_means_key(arr, (4, 4))]
    assert series.scratch[block_means_key(arr, (4, 4))].shape == (10, 11, 11)
    streamed = abdomen_seg.work_grid(series.volume, dict(series.scratch))
    fresh = abdomen_seg.work_grid(series.volume, None)
    assert np.array_equal(streamed.detail, fresh.detail) and np.array_equal(streamed.image, fresh.image)
    # and the detail grid is the block mean it says it is (first block of the first canonical slice, 2 slices)
    assert np.isclose(fresh.detail[0, 0, 0], arr[0:1, 0:4, 0:4].mean(), atol=1e-3)


def test_installed_models_ask_for_the_ct_block_means_and_their_mr_grids() -> None:
    # What the receiver passes to every assembler: the bundled models' in-plane passes per modality.
    from scanqc.checks import abdomen_seg
    from scanqc.checks.ml import inplane_targets
    from scanqc.preprocessing import BlockMeans

    targets = inplane_targets()
    assert abdomen_seg.available()
    assert BlockMeans(abdomen_seg.DETAIL_MM) in targets["CT"]
    assert targets["MR"] and all(isinstance(g, tuple) and len(g) == 2 for g in targets["MR"])


def test_background_rescale_is_pydicoms_values_through_mixed_rescales_and_a_growing_buffer() -> None:
    # Rescaling and the in-plane passes run in the conversion thread, a chunk of slices at a time, one call per
    # run of equal rescales. Here: 40 slices arriving shuffled (no run of consecutive slots longer than chance),
    # three rescale values, and a buffer started at 4 slots (it grows while chunks are in flight). Every slice
    # must be pydicom's stored values * slope + intercept, and the block means those of the volume.
    from scanqc.preprocessing import BlockMeans, block_means_inplane, block_means_key, canonicalize

    vol = _volume(n=40, size=24)
    dss = [_roundtrip(d) for d in volume_to_datasets(vol, "CT")]
    for i, ds in enumerate(dss):
        if i % 3 == 1:
            ds.RescaleSlope, ds.RescaleIntercept = 2, -3000
        elif i % 3 == 2:
            ds.RescaleSlope, ds.RescaleIntercept = 0.5, 0
        ds = _roundtrip(ds)
        dss[i] = ds
    want = {d.SOPInstanceUID: (d.pixel_array.astype(np.float32) * np.float32(d.RescaleSlope)
                               + np.float32(d.RescaleIntercept)) for d in dss}
    order = list(range(len(dss)))
    random.Random(5).shuffle(order)
    asm = SeriesAssembler("s", expected_frames=4, inplane={"CT": (BlockMeans(2.0),)})
    for i in order:
        assert asm.add(dss[i]) == "added"
    series = asm.finish()
    assert series.volume is not None and series.volume.shape == (40, 24, 24)
    for z, h in enumerate(series.headers):
        assert np.array_equal(series.volume.array[z], want[h.SOPInstanceUID]), z
    arr, _ = canonicalize(series.volume)
    key = block_means_key(arr, (2, 2))
    assert list(series.scratch) == [key]
    assert np.array_equal(series.scratch[key], block_means_inplane(arr, (2, 2), None))


def test_pixels_read_from_files_straight_into_staging_equal_pydicoms(tmp_path: Path) -> None:
    # Uncompressed pixels left in the file by the header parse are read straight into the conversion thread's
    # staging rows (no copy after), except where unused high bits must be masked first (BitsStored 12 of 16,
    # garbage above). Shuffled files, a buffer grown from 3 slots, both kinds mixed: every slice must be
    # pydicom's pixel_array * slope + intercept.
    from scanqc.io.dicom import read_file

    vol = _volume(n=37, size=192)  # over the 64 KiB the header parse leaves in the file
    paths = []
    for i, ds in enumerate(volume_to_datasets(vol, "CT")):
        if i % 4 == 1:
            stored = np.frombuffer(ds.PixelData, np.uint16).copy() & 0x0FFF
            stored |= np.uint16(0xA000)  # high bits pydicom masks off
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
            ds.PixelData = stored.tobytes()
        paths.append(tmp_path / f"{i:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    want = {}
    for p in paths:
        d = pydicom.dcmread(p)
        want[d.SOPInstanceUID] = d.pixel_array.astype(np.float32) * np.float32(d.RescaleSlope) + np.float32(
            d.RescaleIntercept)
    order = list(range(len(paths)))
    random.Random(7).shuffle(order)
    asm = SeriesAssembler("s", expected_frames=3)
    for i in order:
        assert asm.add(read_file(paths[i]), paths[i]) == "added"
    series = asm.finish()
    assert series.volume is not None and series.volume.shape == (37, 192, 192)
    for z, h in enumerate(series.headers):
        assert np.array_equal(series.volume.array[z], want[h.SOPInstanceUID]), z


def test_a_volume_block_is_reused_once_nothing_refers_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Volume blocks come from a pool (a reused block's pages are resident; fresh ones cost the slowest checks
    # 100-300 ms). A block must never be handed out while any array still refers to its memory, and must be
    # handed out again once none does.
    import gc

    from scanqc.ingest import assembler

    pool = assembler._BlockPool(64 * 2**20)
    monkeypatch.setattr(assembler, "_pool", pool)

    def series(seed: int) -> tuple[Series, Volume]:
        vol = _volume(n=10, size=32, seed=seed)
        return _assemble([_roundtrip(d) for d in volume_to_datasets(vol, "CT")]), vol

    a, _ = series(1)
    kept = a.volume.array[3:5, ::2]  # a view of a's block: a's block stays in use
    kept_values = kept.copy()
    del a
    gc.collect()
    b, vol_b = series(2)
    assert not np.shares_memory(b.volume.array, kept)
    np.testing.assert_array_equal(kept, kept_values)  # a's slices were not overwritten by b's
    np.testing.assert_allclose(b.volume.array, vol_b.array, atol=1)
    del b, kept
    gc.collect()
    c, vol_c = series(3)
    assert len(pool._blocks) == 2 and any(c.volume.array.base is blk for blk in pool._blocks)  # a freed one
    np.testing.assert_allclose(c.volume.array, vol_c.array, atol=1)


def test_the_block_pool_keeps_to_its_budget_and_serves_from_the_smallest_free_block() -> None:
    from scanqc.ingest.assembler import _BlockPool

    pool = _BlockPool(1000 * 4)
    first = pool.take(600)
    other = pool.take(600)  # the first is in use and two do not fit: a block of its own, not kept
    assert not np.shares_memory(first, other) and len(pool._blocks) == 1
    del first, other
    again = pool.take(300)
    assert again.base is pool._blocks[0]  # the free 600 serves 300
    del again
    big = pool.take(900)  # the free 600 is dropped to make room
    assert len(pool._blocks) == 1 and big.base is pool._blocks[0] and big.size == 900
    assert _BlockPool(0).take(10).base is None  # a zero budget keeps nothing


def test_a_forked_child_still_assembles() -> None:
    # The conversion thread is not inherited by fork (a worker process of the service): the child must start its
    # own, not queue slices for a thread that does not exist and wait forever in finish().
    import os
    import time

    vol = _volume(n=6, size=16)
    _assemble([_roundtrip(d) for d in volume_to_datasets(vol, "CT")])  # the parent's conversion thread runs
    dss = [_roundtrip(d) for d in volume_to_datasets(vol, "CT")]
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only with the right volume
        ok = False
        try:
            s = _assemble(dss)
            ok = s.volume is not None and np.allclose(s.volume.array, vol.array, atol=0.5)
        finally:
            os._exit(0 if ok else 3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child never finished assembling (no conversion thread)")
