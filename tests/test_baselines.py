"""SCL, batch-all triplet, cosine-similarity, CE and the combined objective against loop oracles."""

import math

import pytest
import torch

import oracles
from gloss_core.losses import (
    BatchAllTripletLoss,
    CombinedLoss,
    CosineSimilarityLoss,
    GLoss,
    NonFiniteEmbeddingsError,
    SupConLoss,
    batch_all_triplet_loss,
    combined_loss,
    cosine_similarity_loss,
    supcon_loss,
)
from helpers import DEVICE, DTYPES, make_batch, np_inputs

CASES = [
    ("supcon", lambda e, y: supcon_loss(e, y, 0.3), lambda e, y: oracles.supcon(e, y, 0.3)),
    ("triplet", lambda e, y: batch_all_triplet_loss(e, y, 2.0), lambda e, y: oracles.batch_all_triplet(e, y, 2.0)),
    ("cosine", cosine_similarity_loss, oracles.cosine_pairs),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,loss_fn,oracle", CASES, ids=IDS)
@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_oracle(name, loss_fn, oracle, dtype, rtol, seed):
    emb, labels, labeled = make_batch(n=13, d=5, num_classes=3, seed=seed, dtype=dtype)
    loss = loss_fn(emb, labels)
    e, y, _ = np_inputs(emb, labels, labeled)
    assert loss.dtype == torch.promote_types(dtype, torch.float32)
    assert loss.item() == pytest.approx(oracle(e, y), rel=max(rtol, 1e-6))


@pytest.mark.parametrize("name,loss_fn,oracle", CASES, ids=IDS)
def test_gradcheck_float64(name, loss_fn, oracle):
    emb, labels, _ = make_batch(n=7, d=3, num_classes=2, seed=3)
    emb.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels), (emb,))


@pytest.mark.parametrize("name,loss_fn,oracle", CASES, ids=IDS)
def test_permutation_invariance(name, loss_fn, oracle):
    emb, labels, _ = make_batch(n=15, d=6, num_classes=3, seed=4)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    assert loss_fn(emb[perm], labels[perm]).item() == pytest.approx(loss_fn(emb, labels).item(), rel=1e-10)


@pytest.mark.parametrize("loss_fn", [lambda e, y: supcon_loss(e, y, 0.5), cosine_similarity_loss], ids=["supcon", "cosine"])
def test_normalised_losses_are_scale_invariant(loss_fn):
    emb, labels, _ = make_batch(n=10, seed=5)
    base = loss_fn(emb, labels).item()
    for scale in (1e-3, 3.0, 1e3):
        assert loss_fn(emb * scale, labels).item() == pytest.approx(base, rel=1e-9)


def test_triplet_depends_on_scale_through_the_margin():
    emb, labels, _ = make_batch(n=10, seed=5)
    assert batch_all_triplet_loss(emb * 10, labels, 1.0).item() != pytest.approx(
        batch_all_triplet_loss(emb, labels, 1.0).item()
    )


def _attached_zero(loss, emb):
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_degenerate_batches_give_attached_zeros():
    emb = torch.randn(5, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    _attached_zero(supcon_loss(emb, torch.arange(5, device=DEVICE), 0.1), emb)  # no positive pair
    emb.grad = None
    _attached_zero(batch_all_triplet_loss(emb, torch.zeros(5, dtype=torch.long, device=DEVICE)), emb)  # no negative
    emb1 = torch.randn(1, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    _attached_zero(cosine_similarity_loss(emb1, torch.zeros(1, dtype=torch.long, device=DEVICE)), emb1)
    emb1.grad = None
    _attached_zero(supcon_loss(emb1, torch.zeros(1, dtype=torch.long, device=DEVICE)), emb1)


def test_identical_embeddings_have_finite_gradients():
    labels = (torch.arange(6) % 2).to(DEVICE)
    for loss_fn in (supcon_loss, batch_all_triplet_loss, cosine_similarity_loss):
        emb = torch.ones(6, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
        loss = loss_fn(emb, labels)
        loss.backward()
        assert math.isfinite(loss.item()) and torch.isfinite(emb.grad).all(), loss_fn.__name__


@pytest.mark.parametrize("loss_fn", [supcon_loss, batch_all_triplet_loss, cosine_similarity_loss])
def test_non_finite_embeddings_raise(loss_fn):
    emb, labels, _ = make_batch(n=6)
    emb[0, 0] = float("nan")
    with pytest.raises(NonFiniteEmbeddingsError):
        loss_fn(emb, labels)


def test_modules_match_functions():
    emb, labels, _ = make_batch(n=12, seed=2)
    assert SupConLoss(0.3)(emb, labels).item() == supcon_loss(emb, labels, 0.3).item()
    assert BatchAllTripletLoss(2.0)(emb, labels).item() == batch_all_triplet_loss(emb, labels, 2.0).item()
    assert CosineSimilarityLoss()(emb, labels).item() == cosine_similarity_loss(emb, labels).item()
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(emb, labels, 0.0)


@pytest.mark.parametrize("weighted", [False, True])
def test_combined_loss_is_ce_plus_lambda_aux(weighted):
    emb, labels, _ = make_batch(n=12, d=6, num_classes=3, seed=9)
    logits = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64, device=DEVICE) if weighted else None
    ce_expected = oracles.cross_entropy(logits.cpu().numpy(), labels.tolist(), None if weights is None else weights.tolist())
    plain = CombinedLoss(None, class_weights=weights)(logits, emb, labels)
    assert plain.item() == pytest.approx(ce_expected, rel=1e-10)
    aux = SupConLoss(0.5)
    combo = CombinedLoss(aux, lam=0.7, class_weights=weights)(logits, emb, labels)
    expected = 0.3 * ce_expected + 0.7 * oracles.supcon(emb.cpu().numpy(), labels.tolist(), 0.5)
    assert combo.item() == pytest.approx(expected, rel=1e-9)
    assert combined_loss(torch.tensor(2.0), torch.tensor(4.0), 0.25).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="lambda"):
        combined_loss(torch.tensor(2.0), torch.tensor(4.0), 1.5)


def test_one_forward_pass_feeds_ce_and_g_loss():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 8).to(DEVICE)
    head = torch.nn.Linear(8, 3).to(DEVICE)
    x = torch.randn(16, 6, device=DEVICE)
    labels = (torch.arange(16) % 3).to(DEVICE)
    calls = []
    encoder.register_forward_hook(lambda *a: calls.append(1))
    emb = encoder(x)
    loss = CombinedLoss(GLoss(3, seed=0), lam=0.8)(head(emb), emb, labels)
    loss.backward()
    assert len(calls) == 1
    assert encoder.weight.grad is not None and head.weight.grad is not None


@pytest.mark.parametrize("name,loss_fn", [
    ("supcon", lambda e, y: supcon_loss(e, y, 0.1)),
    ("triplet", lambda e, y: batch_all_triplet_loss(e, y, 2.0)),
    ("cosine", cosine_similarity_loss),
    ("gloss", lambda e, y: GLoss(num_classes=4, gamma=0.7, sigma=4.0, seed=0)(e, y)),
], ids=["supcon", "triplet", "cosine", "gloss"])
def test_every_loss_keeps_its_precision_under_bf16_autocast(name, loss_fn):
    """The training step calls the loss inside the model's autocast region: a bf16 autocast must not
    run the loss's matmuls in bf16 (gradient errors of 1e-3 to 1e-2 before), so every loss is
    compared at the same precision as G-Loss."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(128, 768, generator=g).to(DEVICE)
    labels = (torch.arange(128) % 4).to(DEVICE)

    def grad(x, autocast):
        x = x.detach().clone().requires_grad_(True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(x, labels)
        loss.backward()
        return loss.detach(), x.grad

    loss64, grad64 = grad(emb.double(), False)
    loss16, grad16 = grad(emb, True)
    assert loss16.dtype == torch.float32
    assert float(abs(loss16.double() - loss64)) <= 1e-4 * float(abs(loss64))
    assert float((grad16.double() - grad64).norm()) <= 1e-4 * float(grad64.norm())
