"""Estimate pairs: generated volumes and first Richardson–Lucy estimates of their images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deconflow import DeconflowError
from deconflow.priors import fit_normalization
from deconflow.solvers import estimate_pairs
from deconflow.solvers.estimate_pairs import EstimatePairSource, draw_psf

PATCH = (6, 24, 24)


def test_drawn_psfs_are_normalised_and_span_modalities_and_media():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(24):
        psf, what = draw_psf((7, 15, 15), (0.25, 0.1, 0.1), rng)
        assert psf.shape == (7, 15, 15) and psf.dtype == np.float32
        assert abs(float(psf.sum()) - 1.0) < 1e-5 and psf.min() >= 0
        assert np.unravel_index(psf.argmax(), psf.shape) == (3, 7, 7)  # centred
        seen.add(tuple(what.split()[:2]))
    assert {m for m, _ in seen} == {"widefield", "confocal"}
    assert {medium for _, medium in seen} == {"air", "water", "oil"}


def _delta_psf(kernel, voxel_size_um, rng):
    psf = np.zeros(kernel, np.float32)
    psf[tuple(k // 2 for k in kernel)] = 1.0
    return psf, "delta"


def test_with_no_blur_and_many_photons_the_estimate_is_the_truth(monkeypatch):
    # checks the plumbing: window crop, shared normalisation and shared flips of the pair
    monkeypatch.setattr(estimate_pairs, "draw_psf", _delta_psf)
    source = EstimatePairSource(PATCH, peak_photon_range=(1e6, 1e6))
    rng = np.random.default_rng(1)
    for _ in range(3):
        truth, estimate, aspect = source.pair(rng)
        assert truth.shape == estimate.shape == PATCH and 1.5 <= aspect <= 4.0
        assert np.corrcoef(truth.ravel(), estimate.ravel())[0, 1] > 0.999
        np.testing.assert_allclose(estimate, truth, atol=0.02 * float(truth.max()))
        norm = fit_normalization(estimate)  # normalised by the estimate's own rule
        assert abs(norm.offset) < 1e-3 and abs(norm.scale - 1.0) < 1e-3


def test_a_blurred_estimate_misses_what_the_truth_holds():
    source = EstimatePairSource(PATCH, peak_photon_range=(1e6, 1e6), iteration_range=(5, 5))
    rng = np.random.default_rng(2)
    errors = []
    for _ in range(3):
        truth, estimate, _ = source.pair(rng)
        errors.append(float(np.mean((truth - estimate) ** 2) / np.mean(truth**2)))
    # five RL iterations leave most of a diffraction-limited blur in place
    assert min(errors) > 0.05, errors


def test_batches_mix_flow_items_and_pairs_and_are_seeded():
    source = EstimatePairSource(PATCH, share=0.5)
    a = source.sample(4, np.random.default_rng(3))
    b = source.sample(4, np.random.default_rng(3))
    assert a.pairs is not None and b.pairs is not None
    assert a.x1.shape == (2, 1, *PATCH) and a.pairs.truth.shape == (2, 1, *PATCH)
    assert a.pairs.estimate.shape == (2, 1, *PATCH) and a.pairs.aspect.shape == (2,)
    assert torch.equal(a.x1, b.x1) and torch.equal(a.pairs.estimate, b.pairs.estimate)
    # an odd batch holds floor(share * batch + u) pairs: 1 or 2 of 3, 1.5 on average
    counts = [source.sample(3, np.random.default_rng(s)) for s in range(40)]
    n_pairs = [0 if c.pairs is None else c.pairs.truth.shape[0] for c in counts]
    assert set(n_pairs) == {1, 2} and all(c.x1.shape[0] == 3 - n for c, n in zip(counts, n_pairs))


def test_all_pairs_and_plane_steps():
    only_pairs = EstimatePairSource(PATCH, share=1.0).sample(2, np.random.default_rng(4))
    assert only_pairs.x1.shape == (0, 1, *PATCH) and only_pairs.pairs is not None
    assert only_pairs.pairs.truth.shape[0] == 2
    planes = EstimatePairSource(PATCH, share=1.0).sample(3, np.random.default_rng(4), plane=True)
    assert planes.pairs is None and planes.x1.shape == (3, 1, 24, 24)


@pytest.mark.parametrize(("share", "patch"), [(0.0, PATCH), (1.5, PATCH), (0.5, (1, 24, 24))])
def test_bad_settings_are_refused(share, patch):
    with pytest.raises(DeconflowError):
        EstimatePairSource(patch, share=share)


def test_pairs_through_one_given_psf_keep_its_voxel_size_and_blur():
    psf = np.zeros((9, 31, 31), np.float32)
    psf[4, 15, 15] = 1.0  # no blur: the estimate is then the truth
    delta = EstimatePairSource(
        PATCH, peak_photon_range=(1e6, 1e6), psf=psf, voxel_size_um=(0.3, 0.1, 0.1)
    )
    assert delta.psf is not None and delta.psf.shape == (5, 23, 23)  # cropped to the patch
    truth, estimate, aspect = delta.pair(np.random.default_rng(3))
    assert aspect == pytest.approx(3.0)
    np.testing.assert_allclose(estimate, truth, atol=0.02 * float(truth.max()))
    # a wide PSF leaves blur in the estimate, as the drawn ones do
    z, y, x = np.meshgrid(*(np.arange(n) - n // 2 for n in (9, 31, 31)), indexing="ij")
    wide = np.exp(-(z**2) / 4.0 - (y**2 + x**2) / 8.0).astype(np.float32)
    blurred = EstimatePairSource(
        PATCH,
        peak_photon_range=(1e6, 1e6),
        iteration_range=(5, 5),
        psf=wide,
        voxel_size_um=(0.3, 0.1, 0.1),
    )
    truth, estimate, _ = blurred.pair(np.random.default_rng(3))
    assert float(np.mean((truth - estimate) ** 2) / np.mean(truth**2)) > 0.05
    assert "given (5, 23, 23) PSF" in blurred.describe()


@pytest.mark.parametrize(
    ("psf", "voxel", "match"),
    [
        (np.ones((5, 9, 9)), None, "voxel size"),
        (np.ones((9, 9)), (0.3, 0.1, 0.1), "3D stack"),
        (np.zeros((5, 9, 9)), (0.3, 0.1, 0.1), "positive sum"),
    ],
)
def test_a_given_psf_without_voxel_size_or_signal_is_refused(psf, voxel, match):
    with pytest.raises(DeconflowError, match=match):
        EstimatePairSource(PATCH, psf=psf, voxel_size_um=voxel)
