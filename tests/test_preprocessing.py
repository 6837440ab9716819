"""The one preprocessing implementation (scanqc.preprocessing): orientation, grid, intensities."""

from __future__ import annotations

import numpy as np
import pytest

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.preprocessing import (
    DEFAULT_SPECS,
    PreprocessSpec,
    canonicalize,
    preprocess,
    resample_fit,
    resample_max,
)
from scanqc.volume import Volume


def _marked(shape=(10, 12, 14)) -> np.ndarray:
    a = np.zeros(shape, np.float32)
    a[-1, 0, 0] = 1.0  # last slice
    return a


def test_default_axial_is_flipped_so_superior_comes_first():
    # Default direction: array axis 0 follows LPS +z (superior), so the last slice is the top one.
    vol = Volume(_marked(), (2.0, 1.0, 1.0))
    arr, spacing = canonicalize(vol)
    assert arr.shape == (10, 12, 14) and spacing == (2.0, 1.0, 1.0)
    assert arr[0, 0, 0] == 1.0  # canonical index 0 = superior


def test_sagittal_stack_is_permuted_to_superior_inferior_first():
    # array axes: (x: left-right, y: superior->inferior, z: anterior->posterior)
    direction = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    vol = Volume(a, (3.0, 1.0, 2.0), direction=direction)
    arr, spacing = canonicalize(vol)
    assert arr.shape == (5, 6, 4)
    assert spacing == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(arr, np.transpose(a, (1, 2, 0)))


def test_resample_fit_shape_and_constant_preserved():
    out = resample_fit(np.full((30, 50, 7), 5.0, np.float32), (16, 16, 16))
    assert out.shape == (16, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, 5.0, atol=1e-5)


def test_ct_windows_become_channels_in_unit_range():
    vol = Volume(np.linspace(-1000, 1000, 20 ** 3, dtype=np.float32).reshape(20, 20, 20), (2, 2, 2), modality="CT")
    spec = DEFAULT_SPECS["contrast_phase"]
    x = preprocess(vol, spec)
    assert x.shape == (spec.in_channels, 48, 48, 48) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_mr_percentile_normalisation_and_channel_padding_for_mixed_models():
    rng = np.random.default_rng(0)
    vol = Volume(rng.gamma(2.0, 300.0, (24, 24, 24)).astype(np.float32), (1, 1, 1), modality="MR")
    spec = PreprocessSpec(shape=(16, 16, 16), ct_windows=[(-100, 300), (0, 600)], modalities=("MR", "CT"))
    x = preprocess(vol, spec)
    assert x.shape == (2, 16, 16, 16)
    assert np.all(x[1] == 0)  # MR fills one channel, the CT-only one stays empty
    assert np.percentile(x[0], 50) < 1.0 and x[0].max() <= 2.0


def test_coverage_padding_adds_mask_channel():
    vol = Volume(np.ones((20, 20, 20), np.float32) * 100, (3, 1, 1), modality="MR")
    x = preprocess(vol, DEFAULT_SPECS["coverage"])
    p = DEFAULT_SPECS["coverage"].pad_slices
    assert x.shape == (2, 48, 48, 48)
    assert np.all(x[1, :p] == 0) and np.all(x[1, -p:] == 0) and np.all(x[1, p:-p] == 1)
    assert np.all(x[0, :p] == 0)


def test_spec_roundtrip_and_bad_values_quote_the_value():
    spec = DEFAULT_SPECS["coverage"]
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ScanQCError) as e:
        PreprocessSpec.from_dict({"shape": [64, 64], "mode": "fit"})
    assert e.value.code == ErrorCode.BAD_MODEL and "64" in e.value.message
    with pytest.raises(ScanQCError, match="crop"):
        PreprocessSpec(mode="crop")


def test_unknown_preprocessing_key_is_an_error_not_ignored():
    # A typo used to be dropped silently, leaving the motion spec's background channel on.
    d = {**DEFAULT_SPECS["motion"].to_dict(), "backgroud_channel": False}
    with pytest.raises(ScanQCError) as e:
        PreprocessSpec.from_dict(d)
    assert e.value.code == ErrorCode.BAD_MODEL
    assert "'backgroud_channel'" in e.value.message and "did you mean 'background_channel'" in e.value.message
    # The derived keys to_dict() writes load back, but only when they agree with the fields.
    assert PreprocessSpec.from_dict(DEFAULT_SPECS["motion"].to_dict()) == DEFAULT_SPECS["motion"]
    with pytest.raises(ScanQCError, match="in_channels 1 disagrees"):
        PreprocessSpec.from_dict({**DEFAULT_SPECS["motion"].to_dict(), "in_channels": 1})
    with pytest.raises(ScanQCError, match="orientation 'RAS'"):
        PreprocessSpec.from_dict({**DEFAULT_SPECS["motion"].to_dict(), "orientation": "RAS"})


_MIXED = PreprocessSpec(shape=(16, 16, 16), ct_windows=[(-100, 300)], ct_max_windows=[(0, 600)],
                        modalities=("MR", "CT"), background_channel=True, pad_slices=2)


@pytest.mark.parametrize("spec", [*DEFAULT_SPECS.values(), _MIXED], ids=[*DEFAULT_SPECS, "mixed"])
def test_channel_names_name_every_channel_preprocess_makes(spec):
    rng = np.random.default_rng(1)
    names = spec.channel_names()
    assert len(names) == spec.in_channels == len(set(names))
    for mod in spec.modalities:
        arr = rng.normal(40.0 if mod == "CT" else 300.0, 20.0, (24, 24, 24)).astype(np.float32)
        assert preprocess(Volume(arr, (2, 2, 2), modality=mod), spec).shape[0] == len(names)
    if spec.background_channel:
        assert names[-1 - bool(spec.pad_slices)].startswith("background")
    if spec.pad_slices:
        assert names[-1] == "inside-scan mask"


def test_unknown_modality_is_a_coded_error():
    with pytest.raises(ScanQCError, match="PT"):
        preprocess(Volume(np.zeros((8, 8, 8), np.float32), (1, 1, 1), modality="PT"), DEFAULT_SPECS["motion"])


def _head_with_noise(ghost: float, rng: np.random.Generator) -> np.ndarray:
    """Bright ellipsoid 'head' in Rician-like noise; ``ghost`` adds a shifted faint copy (phase-encode ghost)."""
    z, y, x = np.mgrid[:48, :80, :80]
    head = (((z - 24) / 14) ** 2 + ((y - 40) / 18) ** 2 + ((x - 40) / 18) ** 2 < 1).astype(np.float32)
    img = head + ghost * np.roll(head, 26, axis=1)
    noise = rng.normal(0, 0.03, (2, *img.shape)).astype(np.float32)
    return np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)


def test_background_channel_is_zero_mean_for_clean_and_positive_for_ghosts():
    rng = np.random.default_rng(0)
    spec = DEFAULT_SPECS["motion"]
    assert spec.background_channel and spec.in_channels == 2
    clean = preprocess(Volume(_head_with_noise(0.0, rng), (2, 2, 2), modality="MR"), spec)
    ghost = preprocess(Volume(_head_with_noise(0.1, rng), (2, 2, 2), modality="MR"), spec)
    assert clean.shape == ghost.shape == (2, 64, 64, 64)
    assert abs(float(clean[1].mean())) < 0.02
    assert float(ghost[1].mean()) > 0.005 + float(clean[1].mean())
    assert float(np.percentile(ghost[1], 99)) > 2 * float(np.percentile(clean[1], 99))  # ghost >> noise floor
    assert np.all(clean[1] >= -1.0) and np.all(ghost[1] <= spec.background_clip)


def test_zero_filled_air_reads_neutral_not_minus_one():
    # Reconstructions that blank the air leave no noise floor: the channel reads 0 (nothing to see), as a clean
    # scan's does; a spec exported before the field existed (motion 2.0.0) keeps -1 there.
    rng = np.random.default_rng(1)
    img = _head_with_noise(0.0, rng)
    zeroed = np.where(img > 0.5, img, 0.0).astype(np.float32)
    spec = DEFAULT_SPECS["motion"]
    assert spec.background_zeroed_neutral
    new = preprocess(Volume(zeroed, (2, 2, 2), modality="MR"), spec)
    noisy = preprocess(Volume(img, (2, 2, 2), modality="MR"), spec)
    assert np.all(new[1] == 0.0) and (noisy[1] != 0).sum() > 1000  # noise air still measured
    d = spec.to_dict()
    d.pop("background_zeroed_neutral")
    old = PreprocessSpec.from_dict(d)
    assert not old.background_zeroed_neutral
    assert float(np.median(preprocess(Volume(zeroed, (2, 2, 2), modality="MR"), old)[1][new[1] == 0])) < -0.9
    np.testing.assert_array_equal(preprocess(Volume(zeroed, (2, 2, 2), modality="MR"), old)[0], new[0])


def test_background_channel_off_keeps_other_specs_unchanged():
    for task in ("contrast_phase", "coverage"):
        spec = DEFAULT_SPECS[task]
        assert not spec.background_channel
        d = spec.to_dict()
        for k in ("background_channel", "background_margin", "background_far", "background_clip"):
            d.pop(k)
        assert PreprocessSpec.from_dict(d) == spec  # old metadata.json (without the fields) loads the same spec
    with pytest.raises(ScanQCError):
        PreprocessSpec(background_margin=-1)


def test_resample_max_keeps_a_small_bright_structure_that_averaging_dilutes():
    # A 300 HU blob of 3x3x3 mm in 40 HU tissue on a 0.75 mm grid (a renal collecting system in delayed phase).
    arr = np.full((120, 160, 160), 40.0, np.float32)
    arr[60:64, 80:84, 80:84] = 300.0
    mean = resample_fit(arr, (24, 24, 24))
    peak = resample_max(arr, (24, 24, 24), (0.75, 0.75, 0.75))
    assert peak.shape == (24, 24, 24) and peak.dtype == np.float32
    assert mean.max() < 100.0  # averaged away onto 5-7 mm voxels
    assert peak.max() > 150.0  # block max of ~3 mm means keeps it
    assert np.median(peak) == pytest.approx(40.0) and np.sum(peak > 41.0) < 30  # flat tissue unchanged


def test_resample_max_depends_on_3mm_content_not_pixel_size():
    # Same noise per 3 mm voxel, acquired on 1 x 0.75 mm pixels or on 3 mm voxels: block means to ~3 mm come
    # before the maximum, so the peak channel agrees (a max over raw fine pixels would read ~+60 HU higher).
    rng = np.random.default_rng(0)
    fine = rng.normal(40.0, 10.0 * np.sqrt(48), (72, 384, 384)).astype(np.float32)  # 3 x 4 x 4 pixels per 3 mm
    coarse = rng.normal(40.0, 10.0, (24, 96, 96)).astype(np.float32)
    f = resample_max(fine, (24, 24, 24), (1.0, 0.75, 0.75))
    c = resample_max(coarse, (24, 24, 24), (3.0, 3.0, 3.0))
    assert abs(float(np.median(f)) - float(np.median(c))) < 2.0


def test_peak_channels_follow_the_spec():
    vol = Volume(np.full((30, 40, 40), 40.0, np.float32), (3, 3, 3), modality="CT")
    spec = PreprocessSpec(shape=(16, 16, 16), ct_windows=[(-100, 300)], ct_max_windows=[(0, 600)], modalities=("CT",))
    assert spec.in_channels == len(spec.ct_windows) + len(spec.ct_max_windows)
    x = preprocess(vol, spec)
    assert x.shape == (spec.in_channels, *spec.shape)
    lo, hi = spec.ct_max_windows[0]
    np.testing.assert_allclose(x[-1], (40.0 - lo) / (hi - lo), atol=1e-5)
    with pytest.raises(ScanQCError) as e:
        PreprocessSpec(ct_max_windows=[(300.0, 100.0)])
    assert e.value.code == ErrorCode.BAD_MODEL and "300" in str(e.value)


def test_contrast_grid_keeps_the_collecting_system_hu_of_a_small_kidney():
    # The delayed-phase cue (200-400 HU excreted contrast) survives the 48^3 mean grid even for the test
    # variant's smallest kidneys: docs/models.md, so contrast errors there are not a resolution problem.
    from scanqc.datasets.ct_phantom import LABELS, make_abdomen_phantom

    spec = DEFAULT_SPECS["contrast_phase"]
    vol, labels, info = make_abdomen_phantom(np.random.default_rng(104), "delayed", "optimal", variant="test")
    assert info["kidney_semi_mm"][0] < 23  # smaller than any training-variant kidney
    cs = (labels == LABELS["collecting_system"]).astype(np.float32)
    share = resample_fit(canonicalize(vol.with_array(cs))[0], spec.shape)
    hu = preprocess(vol, spec, "CT")[1] * (spec.ct_windows[1][1] - spec.ct_windows[1][0]) + spec.ct_windows[1][0]
    at_cs = float(hu.reshape(-1)[np.argmax(share)])
    assert abs(at_cs - info["hu"]["collecting_system"]) < 40, (at_cs, info["hu"]["collecting_system"])


def test_resample_fit_of_a_flipped_view_equals_that_of_a_contiguous_copy():
    # canonicalize returns flipped views; resample_fit folds the flips into its matrices instead of copying.
    rng = np.random.default_rng(4)
    a = rng.normal(0, 100, (23, 40, 36)).astype(np.float32)
    for view in (a[::-1], a[:, ::-1], a[:, :, ::-1], a[::-1, ::-1, ::-1]):
        got = resample_fit(view, (9, 12, 10))
        want = resample_fit(np.ascontiguousarray(view), (9, 12, 10))
        assert np.allclose(got, want, atol=1e-3)
    cache: dict = {}
    # The in-plane cache must tell a flipped view from the unflipped array (same memory, other matrices).
    first = resample_fit(a, (9, 12, 10), cache=cache)
    flipped = resample_fit(a[:, ::-1], (9, 12, 10), cache=cache)
    assert np.allclose(flipped, first[:, ::-1], atol=1e-3) and not np.allclose(flipped, first, atol=1e-3)


@pytest.mark.parametrize("op", ["mean", "max"])
def test_block_reduce_partial_block_is_the_edge_padded_definition(op):
    from scanqc.preprocessing import _block_reduce

    rng = np.random.default_rng(5)
    a = rng.normal(size=(7, 11, 13)).astype(np.float32)
    for ax in range(3):
        for k in (2, 3, 4, 5):
            m = -(-a.shape[ax] // k)
            pad = [(0, 0)] * 3
            pad[ax] = (0, m * k - a.shape[ax])
            p = np.moveaxis(np.pad(a, pad, mode="edge"), ax, 0)
            blocks = p.reshape(m, k, *p.shape[1:])
            want = np.moveaxis(blocks.mean(1) if op == "mean" else blocks.max(1), 0, ax)
            assert np.allclose(_block_reduce(a, ax, k, op), want, atol=1e-5), (ax, k)


@pytest.mark.parametrize(("shape", "ks"), [((512, 512), (3, 3)), ((7, 10, 11), (2, 3, 4)), ((5, 9), (5, 1)),
                                           ((4, 6), (3, 2)), ((3, 7), (3, 3))])
def test_block_mean_is_the_mean_of_each_block_including_the_partial_last_one(shape, ks):
    from scanqc.preprocessing import block_mean

    arr = np.random.default_rng(1).normal(size=shape).astype(np.float32) * 500
    got = block_mean(arr, ks)
    edges = [list(range(0, n, k)) + [n] for n, k in zip(shape, ks)]
    assert got.shape == tuple(len(e) - 1 for e in edges)
    for idx in np.ndindex(got.shape):
        block = arr[tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, idx))]
        np.testing.assert_allclose(got[idx], block.mean(), rtol=1e-5, atol=1e-3)
