"""Dynamically padded batches of a split, tokenised once (`gloss_core/data/tokens.py`).

The reference pads every text to 128 tokens; MR's sentences are ~20 words, so most of its compute
goes to padding. Here each batch is padded to its own longest text, and training batches are
drawn so that they pad little (docs/method.md, "Batching"):
- `stratified` (the default): class-stratified length buckets. Every batch draws every class in
  proportion, from one length quantile of each class: random sampling's class mix, which
  G-Loss's graph and SupCon's positives depend on, with most of the grouping's padding savings.
- `grouped`: shuffled chunks of batches, each sorted by length, then the batch order shuffled.
  Pads least, but a batch's class mix follows the lengths (skewed where classes differ in length).
- `random`: a plain shuffle each epoch, as the reference draws its batches.
"""

from __future__ import annotations

import torch

from gloss_core.config import CHOICES
from gloss_core.data.splits import Split
from gloss_core.data.tokens import tokenize

MEGA_BATCHES = 50  # batches per length-sorted (grouped) or length-bucketed (stratified) chunk
BATCHINGS = CHOICES["batching"]  # stratified | grouped | random


class Batches:
    """Dynamically padded batches of one split.

    Args:
        split: the texts (and pairs) and labels.
        tokenizer: a Hugging Face tokenizer.
        batch_size: rows per batch.
        max_length: truncation length in tokens.
        shuffle_seed: None keeps file order (evaluation); an int draws the batches of every epoch
            from `(shuffle_seed, epoch)` the way `batching` says.
        pad_to: pad every batch to this many tokens (the reference's behaviour; for benchmarks).
        batching: how shuffled batches are drawn: stratified | grouped | random (module docstring).
    """

    def __init__(self, split: Split, tokenizer, batch_size: int, max_length: int = 128,
                 shuffle_seed: int | None = None, pad_to: int | None = None, use_cache: bool = True,
                 batching: str = "stratified"):
        if batching not in BATCHINGS:
            raise ValueError(f"batching must be one of {BATCHINGS}, got {batching!r}")
        self.input_ids, self.token_type_ids = tokenize(split, tokenizer, max_length, use_cache)
        self.lengths = torch.tensor([len(ids) for ids in self.input_ids])
        self.labels = split.labels
        self.pad_id = tokenizer.pad_token_id or 0
        self.batch_size = batch_size
        self.shuffle_seed = shuffle_seed
        self.pad_to = pad_to
        self.batching = batching
        self.epoch = 0  # set by the training loop (and restored on resume)

    def __len__(self) -> int:
        return (len(self.input_ids) + self.batch_size - 1) // self.batch_size

    def order(self, epoch: int) -> list[list[int]]:
        """The rows of each batch in `epoch`: a function of (shuffle_seed, epoch) only; `len(self)`
        batches of `batch_size` rows (the last one fewer). `grouped` and `stratified` cut the
        shuffled rows into chunks of MEGA_BATCHES batches, sort each chunk (by length, or by
        `_stratified_key`), cut it into batches and shuffle the order of all batches."""
        n = len(self.input_ids)
        if self.shuffle_seed is None:
            return [list(range(s, min(s + self.batch_size, n))) for s in range(0, n, self.batch_size)]
        g = torch.Generator().manual_seed(self.shuffle_seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        if self.batching == "random":
            return [perm[s : s + self.batch_size].tolist() for s in range(0, n, self.batch_size)]
        batches = []
        chunk = self.batch_size * MEGA_BATCHES
        for start in range(0, n, chunk):
            rows = perm[start : start + chunk]
            key = self._stratified_key(rows, g) if self.batching == "stratified" else -self.lengths[rows]
            rows = rows[key.argsort(stable=True)]  # grouped: longest first, ties in random order
            batches += [rows[s : s + self.batch_size].tolist() for s in range(0, len(rows), self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in shuffled]

    def _stratified_key(self, rows: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Class-stratified length buckets: each class's rows in the chunk, sorted by length (ties in
        the chunk's random order), get evenly spaced keys in [0, 1), (j + u) / m for the j-th of m,
        with a random offset u per class. Consecutive rows by key, cut into batches, then hold every
        class in proportion (to about a row each), from one length quantile of each class."""
        labels = self.labels[rows]
        key = torch.empty(len(rows), dtype=torch.float64)
        for c in labels.unique().tolist():
            members = (labels == c).nonzero().squeeze(1)
            members = members[self.lengths[rows[members]].argsort(stable=True)]
            u = torch.rand((), generator=g, dtype=torch.float64)
            key[members] = (torch.arange(len(members), dtype=torch.float64) + u) / len(members)
        return key

    def collate(self, rows: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        seqs = [self.input_ids[i] for i in rows]
        width = self.pad_to or max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        types = torch.zeros((len(seqs), width), dtype=torch.long) if self.token_type_ids is not None else None
        for r, i in enumerate(rows):
            length = len(self.input_ids[i])
            ids[r, :length] = self.input_ids[i]
            mask[r, :length] = 1
            if types is not None:
                types[r, :length] = self.token_type_ids[i]
        inputs = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            inputs["token_type_ids"] = types
        return inputs, self.labels[rows]

    def __iter__(self):
        for rows in self.order(self.epoch):
            yield self.collate(rows)
