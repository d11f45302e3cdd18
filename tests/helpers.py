"""Test helpers. GLOSS_TEST_DEVICE=cuda runs the loss tests on a GPU (default: cpu)."""

from __future__ import annotations

import math
import os

import torch

DEVICE = torch.device(os.environ.get("GLOSS_TEST_DEVICE", "cpu"))

# (dtype, relative tolerance against the float64 oracle)
DTYPES = [(torch.float64, 1e-7), (torch.float32, 1e-4), (torch.bfloat16, 3e-2)]


def make_batch(n=12, d=6, num_classes=3, seed=0, dtype=torch.float64, gamma=0.5):
    """A random batch in which every class appears, with a seeded mask labelling ceil(n*gamma) nodes."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)].to(DEVICE)
    labeled = (torch.randperm(n, generator=g) < math.ceil(n * gamma)).to(DEVICE)
    return emb, labels, labeled


def np_inputs(emb, labels, labeled):
    """The exact values a loss saw (after any rounding to bf16), as float64 NumPy arrays and lists."""
    return emb.detach().double().cpu().numpy(), labels.cpu().tolist(), labeled.cpu().tolist()


def max_overlap(runs) -> int:
    """The most MLflow runs that were running at one moment (from their start and end times)."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak
