"""Sigma strategies against loop oracles, and the G-Loss label mask."""

import math

import pytest
import torch

import oracles
from gloss_core.graph.masking import sample_labeled_mask
from gloss_core.graph.sigma import BatchSqrtSigma, FixedSigma, dicm_sigma, make_sigma, sqrt_rule_sigma


@pytest.mark.parametrize("n", [2, 5, 6, 40, 41])
@pytest.mark.parametrize("include_diagonal", [False, True])
def test_sqrt_rule_matches_oracle(n, include_diagonal):
    emb = torch.randn(n, 7, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    expected = oracles.sqrt_rule(emb.numpy(), include_diagonal=include_diagonal)
    for chunk in (3, 1024):
        got = sqrt_rule_sigma(emb, chunk_size=chunk, include_diagonal=include_diagonal)
        assert got == pytest.approx(expected, rel=1e-12)


def test_sqrt_rule_on_clustered_data_is_exact_across_histogram_bins():
    # many near-identical distances stress the histogram/selection passes
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g, dtype=torch.float64)
    emb = centers[torch.arange(300) % 3] + 1e-6 * torch.randn(300, 16, generator=g, dtype=torch.float64)
    assert sqrt_rule_sigma(emb, chunk_size=64) == pytest.approx(oracles.sqrt_rule(emb.numpy()), rel=1e-12)


def test_batch_sqrt_sigma_is_detached_and_equals_the_rule():
    emb = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    sigma = BatchSqrtSigma()(emb)
    assert not sigma.requires_grad
    assert float(sigma) == pytest.approx(sqrt_rule_sigma(emb), rel=1e-12)


def test_dicm_matches_oracle():
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(50, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (50,), generator=g)
    expected = oracles.dicm(emb.numpy(), labels.tolist())
    assert dicm_sigma(emb, labels, chunk_size=7) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="two classes"):
        dicm_sigma(emb, torch.zeros(50, dtype=torch.long))


def test_make_sigma_specs():
    emb = torch.randn(20, 4, dtype=torch.float64)
    labels = torch.arange(20) % 2
    assert make_sigma(0.5) == FixedSigma(0.5)
    assert make_sigma("sqrt", emb).value == pytest.approx(sqrt_rule_sigma(emb))
    assert make_sigma("dicm", emb, labels).value == pytest.approx(dicm_sigma(emb, labels))
    assert isinstance(make_sigma("batch_sqrt"), BatchSqrtSigma)
    with pytest.raises(ValueError, match="needs the training-set embeddings"):
        make_sigma("sqrt")
    with pytest.raises(ValueError, match="unknown sigma 'median'"):
        make_sigma("median")
    with pytest.raises(ValueError, match="positive finite"):
        FixedSigma(-1.0)


@pytest.mark.parametrize("n,gamma", [(128, 0.7), (10, 0.5), (7, 0.0), (7, 1.0), (33, 0.9)])
def test_plain_mask_keeps_ceil_n_gamma(n, gamma):
    labels = torch.arange(n) % 4
    mask = sample_labeled_mask(labels, gamma, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert int(mask.sum()) == math.ceil(n * gamma)


def test_mask_is_a_function_of_the_seed():
    labels = torch.arange(64) % 5
    a = sample_labeled_mask(labels, 0.6, torch.Generator().manual_seed(7))
    b = sample_labeled_mask(labels, 0.6, torch.Generator().manual_seed(7))
    c = sample_labeled_mask(labels, 0.6, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stratified_mask_labels_every_class_with_two_members():
    g = torch.Generator().manual_seed(1)
    # 12 classes of size 2, 1 class of size 1, gamma small: the plain mask would miss classes
    labels = torch.cat([torch.arange(12).repeat_interleave(2), torch.tensor([12])])
    for _ in range(20):
        mask = sample_labeled_mask(labels, 0.2, g, stratified=True)
        for c in range(12):
            assert mask[labels == c].any(), c
        assert int(mask.sum()) == max(12, math.ceil(25 * 0.2))
    plain_misses = any(
        not all(sample_labeled_mask(labels, 0.2, g)[labels == c].any() for c in range(12)) for _ in range(5)
    )
    assert plain_misses


def test_stratified_mask_keeps_the_count_when_there_is_room():
    labels = torch.arange(40) % 4
    mask = sample_labeled_mask(labels, 0.5, torch.Generator().manual_seed(2), stratified=True)
    assert int(mask.sum()) == 20
    with pytest.raises(ValueError, match="gamma"):
        sample_labeled_mask(labels, -0.1)


@pytest.mark.slow
def test_sqrt_rule_streams_20000_embeddings_in_bounded_memory():
    """N = 20,000: the full float64 distance matrix alone would take 3.2 GB; the chunked rule must not."""
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from gloss_core.graph.sigma import sqrt_rule_sigma\n"
        "emb = torch.randn(20000, 32, generator=torch.Generator().manual_seed(0))\n"
        "s = sqrt_rule_sigma(emb)\n"
        "print(s, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    sigma, peak_kib = float(out[0]), int(out[1])
    assert 0.5 < sigma < 0.9  # random directions in 32-d: distances concentrate near sqrt(2)
    assert peak_kib < 2_000_000, f"peak RSS {peak_kib / 1e6:.2f} GB"


def test_scaled_sigma():
    from gloss_core.graph.sigma import ScaledSigma, scaled_sigma

    assert scaled_sigma(FixedSigma(0.4), 2.5) == FixedSigma(1.0)
    emb = torch.randn(20, 4, dtype=torch.float64)
    scaled = scaled_sigma(BatchSqrtSigma(), 0.5)
    assert isinstance(scaled, ScaledSigma)
    assert float(scaled(emb)) == pytest.approx(0.5 * float(BatchSqrtSigma()(emb)))
    with pytest.raises(ValueError, match="sigma_scale"):
        scaled_sigma(FixedSigma(1.0), 0.0)
