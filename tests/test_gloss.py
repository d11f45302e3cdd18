"""G-Loss and label propagation against the loop oracle, gradients, invariances, degenerate batches."""

import math

import numpy as np
import pytest
import torch

import oracles
from gloss_core.graph import propagate_labels, transition_matrix, gaussian_affinity
from gloss_core.losses import GLoss, NonFiniteEmbeddingsError, g_loss
from helpers import DEVICE, DTYPES, make_batch, np_inputs


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_propagation_matches_oracle(sigma, seed):
    emb, labels, labeled = make_batch(n=14, d=5, num_classes=3, seed=seed)
    F = propagate_labels(emb, labels, labeled, sigma, 3)
    expected = oracles.propagate(*np_inputs(emb, labels, labeled), sigma, 3)
    assert F.dtype == torch.float64
    assert F.shape == (int((~labeled).sum()), 3)
    np.testing.assert_allclose(F.cpu().numpy(), expected, rtol=1e-7, atol=1e-9)


def test_transition_matrix_matches_oracle():
    emb, _, _ = make_batch(n=9, d=4, seed=3)
    T = transition_matrix(gaussian_affinity(emb, 0.7))
    np.testing.assert_allclose(T.cpu().numpy(), oracles.transition(emb.cpu().numpy(), 0.7), rtol=1e-10)
    # the rescaled affinity gives the same transition matrix (global scale invariance)
    T_rescaled = transition_matrix(gaussian_affinity(emb, 0.7, rescale=True))
    torch.testing.assert_close(T_rescaled, T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("formulation", ["paper", "reference"])
@pytest.mark.parametrize("weighted", [False, True])
def test_g_loss_matches_oracle(dtype, rtol, formulation, weighted):
    emb, labels, labeled = make_batch(n=16, d=8, num_classes=4, seed=7, dtype=dtype)
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0], device=DEVICE) if weighted else None
    loss = g_loss(emb, labels, labeled, 0.8, 4, weights, formulation=formulation)
    expected = oracles.g_loss(
        *np_inputs(emb, labels, labeled), 0.8, 4,
        class_weights=None if weights is None else weights.tolist(), formulation=formulation,
    )
    assert loss.dtype == torch.promote_types(dtype, torch.float32)
    assert loss.item() == pytest.approx(expected, rel=rtol)


def test_reference_formulation_differs_from_paper():
    emb, labels, labeled = make_batch(n=16, seed=4)
    paper = g_loss(emb, labels, labeled, 1.0, 3)
    reference = g_loss(emb, labels, labeled, 1.0, 3, formulation="reference")
    # CE over probabilities used as logits, divided by |U|: much smaller than the NLL
    assert reference.item() < paper.item() / 4
    with pytest.raises(ValueError, match="formulation"):
        g_loss(emb, labels, labeled, 1.0, 3, formulation="ref")


@pytest.mark.parametrize("formulation", ["paper", "reference"])
def test_gradcheck_float64(formulation):
    emb, labels, labeled = make_batch(n=8, d=4, num_classes=2, seed=5)
    emb.requires_grad_(True)
    weights = torch.tensor([1.0, 2.5], dtype=torch.float64, device=DEVICE)
    assert torch.autograd.gradcheck(
        lambda e: g_loss(e, labels, labeled, 0.9, 2, weights, formulation=formulation), (emb,)
    )
    assert torch.autograd.gradcheck(lambda e: propagate_labels(e, labels, labeled, 0.9, 2), (emb,))


def test_gradient_matches_oracle_finite_differences():
    emb, labels, labeled = make_batch(n=10, d=3, num_classes=2, seed=11)
    emb.requires_grad_(True)
    g_loss(emb, labels, labeled, 0.6, 2).backward()
    e, y, m = np_inputs(emb, labels, labeled)
    h = 1e-6
    numeric = np.zeros_like(e)
    for i in range(e.shape[0]):
        for j in range(e.shape[1]):
            plus, minus = e.copy(), e.copy()
            plus[i, j] += h
            minus[i, j] -= h
            numeric[i, j] = (oracles.g_loss(plus, y, m, 0.6, 2) - oracles.g_loss(minus, y, m, 0.6, 2)) / (2 * h)
    np.testing.assert_allclose(emb.grad.cpu().numpy(), numeric, rtol=1e-5, atol=1e-7)


def test_rows_sum_to_one_and_are_probabilities():
    for seed in range(5):
        emb, labels, labeled = make_batch(n=32, d=16, num_classes=5, seed=seed, dtype=torch.float32)
        F = propagate_labels(emb, labels, labeled, 0.5, 5)
        torch.testing.assert_close(F.sum(dim=1), torch.ones(F.shape[0], dtype=torch.float64, device=DEVICE))
        assert (F >= -1e-12).all()


def test_permutation_invariance():
    emb, labels, labeled = make_batch(n=20, d=7, num_classes=4, seed=8)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    loss = g_loss(emb, labels, labeled, 1.2, 4)
    loss_perm = g_loss(emb[perm], labels[perm], labeled[perm], 1.2, 4)
    assert loss_perm.item() == pytest.approx(loss.item(), rel=1e-10)
    # F rows follow the permutation of the hidden nodes
    F = propagate_labels(emb, labels, labeled, 1.2, 4)
    F_perm = propagate_labels(emb[perm], labels[perm], labeled[perm], 1.2, 4)
    hidden_index = torch.full((20,), -1, dtype=torch.long, device=DEVICE)
    hidden_index[~labeled] = torch.arange(int((~labeled).sum()), device=DEVICE)
    torch.testing.assert_close(F_perm, F[hidden_index[perm][~labeled[perm]]], rtol=1e-10, atol=1e-12)


def test_scale_invariance():
    emb, labels, labeled = make_batch(n=12, seed=9)
    base = g_loss(emb, labels, labeled, 0.7, 3).item()
    for scale in (1e-3, 0.5, 17.0, 1e4):
        assert g_loss(emb * scale, labels, labeled, 0.7, 3).item() == pytest.approx(base, rel=1e-9)


def _loss_and_grad(emb, labels, labeled, sigma, num_classes, **kw):
    emb = emb.detach().clone().requires_grad_(True)
    loss = g_loss(emb, labels, labeled, sigma, num_classes, **kw)
    loss.backward()
    return loss, emb.grad


def test_no_hidden_node_gives_attached_zero():
    emb, labels, _ = make_batch(n=6)
    loss, grad = _loss_and_grad(emb, labels, torch.ones(6, dtype=torch.bool, device=DEVICE), 1.0, 3)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    assert torch.equal(grad, torch.zeros_like(grad))
    assert propagate_labels(emb, labels, torch.ones(6, dtype=torch.bool, device=DEVICE), 1.0, 3).shape == (0, 3)


def test_no_labeled_node_gives_attached_zero_and_uniform_rows():
    emb, labels, _ = make_batch(n=6)
    none = torch.zeros(6, dtype=torch.bool, device=DEVICE)
    loss, grad = _loss_and_grad(emb, labels, none, 1.0, 3)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    assert torch.equal(grad, torch.zeros_like(grad))
    F = propagate_labels(emb, labels, none, 1.0, 3)
    torch.testing.assert_close(F, torch.full((6, 3), 1 / 3, dtype=torch.float64, device=DEVICE))


def test_tiny_sigma_isolated_hidden_rows_fall_back_to_uniform():
    emb, labels, labeled = make_batch(n=10, d=6, num_classes=2, seed=2)
    loss, grad = _loss_and_grad(emb, labels, labeled, 1e-3, 2)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
    F = propagate_labels(emb, labels, labeled, 1e-3, 2)
    torch.testing.assert_close(F.sum(dim=1), torch.ones(F.shape[0], dtype=torch.float64, device=DEVICE))
    # at sigma = 1e-3 every weight but the closest pair's underflows: most hidden rows are uniform
    uniform = torch.isclose(F, torch.full_like(F, 0.5), atol=1e-6).all(dim=1)
    assert uniform.sum() >= F.shape[0] - 2


def test_hidden_duplicates_cut_off_from_the_labeled_set_get_uniform_rows():
    # nodes 0-1 are hidden duplicates, far from the labeled cluster 2-5: their component has no label
    far = torch.tensor([[1.0, 0.0, 0.0]] * 2 + [[0.0, 1.0, 0.0]] * 2 + [[0.0, 0.0, 1.0]] * 2, dtype=torch.float64)
    far = far + 1e-3 * torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    far[1] = far[0]
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    labeled = torch.tensor([False, False, True, True, True, True])
    F = propagate_labels(far.to(DEVICE), labels.to(DEVICE), labeled.to(DEVICE), 0.01, 2)
    torch.testing.assert_close(F, torch.full((2, 2), 0.5, dtype=torch.float64, device=DEVICE), atol=1e-6, rtol=0)
    loss, grad = _loss_and_grad(far.to(DEVICE), labels.to(DEVICE), labeled.to(DEVICE), 0.01, 2)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-5)
    assert torch.isfinite(grad).all()


def test_identical_embeddings():
    emb = torch.ones(8, 5, dtype=torch.float64, device=DEVICE)
    labels = (torch.arange(8) % 2).to(DEVICE)
    labeled = (torch.arange(8) < 4).to(DEVICE)
    loss, grad = _loss_and_grad(emb, labels, labeled, 1.0, 2)
    # every node is equally close to every other: each hidden row is the labeled class frequency
    assert loss.item() == pytest.approx(math.log(2), rel=1e-9)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("sigma", [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_sigma_range_is_finite(sigma, dtype):
    emb, labels, labeled = make_batch(n=24, d=8, num_classes=3, seed=1, dtype=dtype)
    loss, grad = _loss_and_grad(emb, labels, labeled, sigma, 3)
    assert math.isfinite(loss.item())
    assert torch.isfinite(grad.float()).all()


def test_class_hidden_but_never_labeled():
    emb, _, _ = make_batch(n=9, d=4, seed=6)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2], device=DEVICE)
    labeled = torch.tensor([True, True, False, True, True, False, False, False, False], device=DEVICE)
    loss, grad = _loss_and_grad(emb, labels, labeled, 1.0, 3)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
    # class 2 never labeled: its hidden nodes score -log(1e-8) and add no gradient of their own
    assert loss.item() > -math.log(1e-8) * 3 / 5 - 1e-6


def test_zero_embedding_row_is_finite():
    emb, labels, labeled = make_batch(n=8, seed=3)
    emb = emb.clone()
    emb[2] = 0.0
    loss, grad = _loss_and_grad(emb, labels, labeled, 1.0, 3)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_embeddings_raise_before_any_solve(bad, monkeypatch):
    emb, labels, labeled = make_batch(n=8, seed=3)
    emb[4, 1] = bad

    def no_solve(*args, **kwargs):
        raise AssertionError("solve called on non-finite embeddings")

    monkeypatch.setattr(torch.linalg, "solve", no_solve)
    with pytest.raises(NonFiniteEmbeddingsError, match="NaN/inf"):
        g_loss(emb, labels, labeled, 1.0, 3)
    with pytest.raises(NonFiniteEmbeddingsError):
        GLoss(num_classes=3)(emb, labels)


def test_bad_labels_are_named():
    emb, labels, labeled = make_batch(n=8)
    with pytest.raises(ValueError, match=r"max 3"):
        g_loss(emb, labels + 1, labeled, 1.0, 3)
    with pytest.raises(ValueError, match="bool mask"):
        g_loss(emb, labels, labeled.long(), 1.0, 3)
    with pytest.raises(ValueError, match="shape"):
        g_loss(emb, labels[:5], labeled, 1.0, 3)


def test_bf16_under_autocast():
    emb, labels, labeled = make_batch(n=16, d=8, seed=12, dtype=torch.float32)
    lin = torch.nn.Linear(8, 8).to(DEVICE)
    with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
        out = lin(emb)
        assert out.dtype == torch.bfloat16
        loss = g_loss(out, labels, labeled, 0.5, 3)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(lin.weight.grad).all()
    # same value as float64 maths on the bf16 values it saw
    expected = oracles.g_loss(*np_inputs(out, labels, labeled), 0.5, 3)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_module_mask_is_seeded_and_reproducible():
    emb, labels, _ = make_batch(n=32, d=8, num_classes=4, seed=0)
    a, b, c = GLoss(4, gamma=0.6, seed=123), GLoss(4, gamma=0.6, seed=123), GLoss(4, gamma=0.6, seed=124)
    seq_a = [a(emb, labels).item() for _ in range(4)]
    seq_b = [b(emb, labels).item() for _ in range(4)]
    seq_c = [c(emb, labels).item() for _ in range(4)]
    assert seq_a == seq_b
    assert seq_a != seq_c
    assert len(set(seq_a)) > 1  # a fresh mask every step


def test_module_with_batch_sigma_and_weights():
    emb, labels, _ = make_batch(n=32, d=8, num_classes=4, seed=0)
    emb.requires_grad_(True)
    loss_fn = GLoss(4, gamma=0.5, sigma="batch_sqrt", class_weights=torch.tensor([1.0, 2.0, 1.0, 0.5]), seed=1,
                    stratified=True).to(DEVICE)
    loss = loss_fn(emb, labels)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(emb.grad).all()
    assert loss_fn.get_config_dict()["sigma"] == "BatchSqrtSigma"
    with pytest.raises(ValueError, match="gamma"):
        GLoss(4, gamma=1.5)


def test_mask_generator_state_is_checkpointed():
    emb, labels, _ = make_batch(n=32, d=8, num_classes=4, seed=0)
    loss_fn = GLoss(4, gamma=0.6, seed=5)
    loss_fn(emb, labels)  # advance the generator
    state = loss_fn.state_dict()
    expected = [loss_fn(emb, labels).item() for _ in range(3)]
    resumed = GLoss(4, gamma=0.6, seed=999)
    resumed.load_state_dict(state)
    assert [resumed(emb, labels).item() for _ in range(3)] == expected


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_sigma_is_named(sigma):
    emb, labels, labeled = make_batch(n=8)
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        g_loss(emb, labels, labeled, sigma, 3)
