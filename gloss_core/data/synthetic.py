"""A deterministic synthetic text-classification corpus, so the main job runs with no data at all.

Each class owns a small set of topic words; every text mixes a few of its class's words with
shared filler words. `label_noise` flips that fraction of labels to another class.

Example:
    >>> from gloss_core.data.synthetic import synthetic_splits
    >>> splits = synthetic_splits(num_classes=3, train_size=120, seed=0)
    >>> splits.num_classes
    3
"""

from __future__ import annotations

import random

import torch

from gloss_core.data.splits import DatasetSplits, Split

_TOPICS = [
    "film actor scene plot director cinema screen role drama cast",
    "market stock price trade shares profit bank investor fund rate",
    "patient disease therapy clinical doctor hospital symptom dose trial cure",
    "team match goal season player coach league score win cup",
    "software computer network data code server chip program user system",
    "election vote party minister policy senate law campaign leader reform",
    "recipe flavor dish kitchen bake sauce spice meal chef taste",
    "planet orbit telescope galaxy star rocket space mission moon solar",
]
_FILLER = "the a of and to in is it that with for on this as was very quite really somewhat".split()


def _split(rng: random.Random, size: int, num_classes: int, label_noise: float, distractors: int = 0) -> Split:
    texts, labels = [], []
    for i in range(size):
        label = i % num_classes
        words = _TOPICS[label % len(_TOPICS)].split()
        tag = f"topic{label}" if label >= len(_TOPICS) else None
        body = rng.choices(words, k=rng.randint(2, 4)) + rng.choices(_FILLER, k=rng.randint(4, 8))
        if distractors:  # topic words of another class make the task harder
            other = rng.choice([c for c in range(num_classes) if c != label]) % len(_TOPICS)
            body += rng.choices(_TOPICS[other].split(), k=rng.randint(0, distractors))
        if tag:
            body.append(tag)
        rng.shuffle(body)
        if rng.random() < label_noise:
            label = rng.choice([c for c in range(num_classes) if c != label])
        texts.append(" ".join(body))
        labels.append(label)
    return Split(texts, torch.tensor(labels, dtype=torch.long))


def synthetic_splits(
    num_classes: int = 2,
    train_size: int = 256,
    val_size: int = 128,
    test_size: int = 128,
    label_noise: float = 0.05,
    seed: int = 0,
    distractors: int = 0,
) -> DatasetSplits:
    """Train/val/test splits of the synthetic corpus; the same arguments give the same texts.

    `distractors`: up to this many topic words of another class are mixed into each text.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise must lie in [0, 1), got {label_noise}")
    rng = random.Random(seed)
    return DatasetSplits(
        train=_split(rng, train_size, num_classes, label_noise, distractors),
        val=_split(rng, val_size, num_classes, label_noise, distractors),
        test=_split(rng, test_size, num_classes, label_noise, distractors),
        label_names=[f"class{c}" for c in range(num_classes)],
    )
