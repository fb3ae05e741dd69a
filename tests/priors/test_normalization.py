"""The prior's intensity normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deconflow import DeconflowError
from deconflow.priors import Normalization, fit_normalization


def test_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 50.0, (6, 20, 20)).astype(np.float32) + 100
    norm = fit_normalization(vol)
    np.testing.assert_allclose(norm.invert(norm.apply(vol)), vol, rtol=1e-5)
    t = torch.from_numpy(vol)
    torch.testing.assert_close(norm.invert(norm.apply(t)), t)
    assert fit_normalization(t) == norm


def test_background_goes_to_zero_and_structure_to_about_one():
    vol = np.full((10, 40, 40), 100.0, np.float32)
    vol[3:8, 10:30, 10:30] += 500.0  # thicker than the smoothing, so its peak survives it
    out = fit_normalization(vol).apply(vol)
    assert abs(float(np.median(out))) < 1e-3
    assert 0.9 < out[5, 20, 20] < 1.2


def test_sparse_faint_structure_is_scaled_by_the_structure_not_the_noise():
    # 4 faint puncta in 160k voxels of noisy background: the 99.9th percentile would be noise
    rng = np.random.default_rng(1)
    vol = 10 + rng.normal(0, 1, (16, 100, 100)).astype(np.float32)
    for z, y, x in [(4, 20, 20), (8, 70, 30), (12, 50, 80), (6, 85, 85)]:
        vol[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] += 20
    out = fit_normalization(vol).apply(vol)
    assert 0.7 < out[8, 70, 30] < 1.5
    scale_pct = np.percentile(vol, 99.9) - np.percentile(vol, 1)
    assert (vol[8, 70, 30] - 10) / scale_pct > 1.5  # what the percentile rule would give


def test_flat_volume_keeps_units_and_bad_input_is_refused():
    assert fit_normalization(np.full((4, 8, 8), 7.0)) == Normalization(offset=7.0, scale=1.0)
    # flat however small its values, and an all-zero volume too
    assert fit_normalization(np.full((4, 8, 8), 7e-9)).scale == 1.0
    assert fit_normalization(np.zeros((4, 8, 8))) == Normalization(offset=0.0, scale=1.0)
    with pytest.raises(DeconflowError, match="NaN"):
        fit_normalization(np.array([[1.0, np.nan]]))
    with pytest.raises(DeconflowError):
        fit_normalization(np.zeros((0, 3)))


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (16,)])
def test_only_one_2d_or_3d_volume_is_normalised(shape):
    # a (K, Z, Y, X) batch would be smoothed across K and share one scale
    with pytest.raises(DeconflowError, match="one 2D or 3D volume"):
        fit_normalization(np.ones(shape, np.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors_are_normalised_like_float32(dtype):
    # a prior run in bfloat16 hands bfloat16 estimates around; numpy has no bfloat16
    rng = np.random.default_rng(1)
    vol = rng.uniform(0.0, 1.0, (6, 16, 16)).astype(np.float32)
    vol[3, 8, 8] = 40.0
    low = torch.from_numpy(vol).to(dtype)
    norm = fit_normalization(low)
    expected = fit_normalization(low.float().numpy())
    assert norm == expected
    assert norm.scale > 1.0


def test_a_volume_in_small_units_is_normalised_like_it_in_large_ones():
    # a float image scaled to a sum of 1 (values ~1e-9 here) has structure: read as flat,
    # the flow fell back to its first estimate. A power of 2 scales every float exactly.
    rng = np.random.default_rng(2)
    vol = rng.uniform(0.0, 1.0, (6, 16, 16)).astype(np.float32)
    vol[3, 8, 8] = 40.0
    scale = 2.0**-30
    ref = fit_normalization(vol)
    small = fit_normalization(vol * np.float32(scale))
    assert small.scale / scale == pytest.approx(ref.scale, rel=1e-6)
    assert small.offset / scale == pytest.approx(ref.offset, rel=1e-6)
