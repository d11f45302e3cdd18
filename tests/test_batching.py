"""How training batches are drawn (`Batches.order`): every mode covers each row once per epoch in
`len()` non-empty batches, as a function of (seed, epoch); `stratified` keeps the training set's
class mix where `grouped` skews it, and pads far less than `random`."""

import math
import random

import pytest
import torch

from gloss_core.config import TrainConfig
from gloss_core.data.batching import BATCHINGS, Batches
from gloss_core.data.splits import Split
from gloss_core.data.synthetic import synthetic_splits
from gloss_core.models import load_tokenizer
from gloss_core.training.build import RunData


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def skewed_split(n: int = 2000, seed: int = 0) -> Split:
    """3 classes at 70/20/10 %, the rarer the longer: log-normal word counts (as texts' are) around
    8, 16 and 32 words, so that sorting by length largely sorts by class."""
    rng = random.Random(seed)
    words = "cat dog sky sea tree road house river stone cloud".split()
    labels, texts = [], []
    for _ in range(n):
        label = rng.choices([0, 1, 2], weights=[70, 20, 10])[0]
        count = max(1, min(120, round(math.exp(rng.gauss(math.log([8, 16, 32][label]), 0.8)))))
        texts.append(" ".join(rng.choice(words) for _ in range(count)))
        labels.append(label)
    return Split(texts, torch.tensor(labels))


def mean_tv(batches: Batches, order: list[list[int]]) -> float:
    """Mean total-variation distance between each batch's class mix and the whole split's."""
    classes = int(batches.labels.max()) + 1
    overall = torch.bincount(batches.labels, minlength=classes).double() / len(batches.labels)
    tvs = [0.5 * (torch.bincount(batches.labels[b], minlength=classes).double() / len(b) - overall).abs().sum()
           for b in order]
    return float(torch.stack(tvs).mean())


def padded_tokens(batches: Batches, order: list[list[int]]) -> int:
    return sum(len(b) * int(batches.lengths[b].max()) for b in order)


@pytest.mark.parametrize("batching", BATCHINGS)
@pytest.mark.parametrize("n, batch_size", [(2000, 16), (1000, 7), (5, 2), (9, 1), (10, 32)])
def test_every_mode_covers_each_row_once_in_len_nonempty_batches(tokenizer, batching, n, batch_size):
    split = skewed_split(n)
    batches = Batches(split, tokenizer, batch_size, shuffle_seed=3, use_cache=False, batching=batching)
    for epoch in (0, 1, 2):
        order = batches.order(epoch)
        assert sorted(r for b in order for r in b) == list(range(n))
        assert len(order) == len(batches) == -(-n // batch_size)
        assert all(order), "an empty batch"
    same = Batches(split, tokenizer, batch_size, shuffle_seed=3, use_cache=False, batching=batching)
    assert same.order(1) == batches.order(1)
    if len(batches) > 2:
        assert batches.order(0) != batches.order(1)
        assert Batches(split, tokenizer, batch_size, shuffle_seed=4, use_cache=False, batching=batching).order(0) \
            != batches.order(0)
    sizes = sorted(len(b) for b in batches.order(0))
    assert sizes[1:] == [batch_size] * (len(sizes) - 1) and sizes[0] == (n % batch_size or batch_size)


def test_stratified_keeps_the_class_mix_and_pads_little(tokenizer):
    split = skewed_split()
    tv, padding = {}, {}
    for batching in BATCHINGS:
        batches = Batches(split, tokenizer, 32, shuffle_seed=0, use_cache=False, batching=batching)
        orders = [batches.order(epoch) for epoch in range(3)]
        tv[batching] = sum(mean_tv(batches, o) for o in orders) / 3
        padding[batching] = sum(padded_tokens(batches, o) for o in orders)
        if batching == "stratified":  # every batch holds each class's share, to about a row
            share = torch.bincount(split.labels).double() / len(split.labels)
            assert all((torch.bincount(split.labels[b], minlength=3) - len(b) * share).abs().max() < 2
                       for o in orders for b in o)
    assert tv["grouped"] > 0.15, f"precondition: grouping skews the class mix ({tv})"
    assert tv["stratified"] <= tv["random"] and tv["stratified"] < 0.5 * tv["grouped"], tv
    assert padding["stratified"] < 0.7 * padding["random"], padding
    assert padding["grouped"] <= padding["stratified"], padding


def test_batching_is_a_checked_option_threaded_into_the_training_batches(tokenizer):
    assert TrainConfig().batching == "stratified"
    with pytest.raises(ValueError, match="batching must be one of"):
        TrainConfig(batching="sorted")
    splits = synthetic_splits(num_classes=2, train_size=40, val_size=8, test_size=8)
    with pytest.raises(ValueError, match="batching must be one of"):
        Batches(splits.train, tokenizer, 8, use_cache=False, batching="sorted")
    data = RunData(splits, tokenizer, 8, 32, order_seed=5, batching="random")
    assert (data.train.batching, data.train.shuffle_seed) == ("random", 5)
    assert data.val.shuffle_seed is None and data.test.shuffle_seed is None and data.eval_train.shuffle_seed is None
    assert data.val.order(0) == [list(range(s, min(s + 8, 8))) for s in range(0, 8, 8)]
    default = RunData(splits, tokenizer, 8, 32, order_seed=5)
    assert default.train.batching == "stratified"
