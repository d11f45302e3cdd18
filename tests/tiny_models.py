"""Small random-initialised encoders for fast tests and benchmarks (MiniLM's vocabulary)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel, PreTrainedModel


def tiny_encoder(architecture: str = "bert", vocab_size: int = 30522, hidden: int = 32, seed: int = 0) -> PreTrainedModel:
    """A small random-initialised BERT, RoBERTa or DistilBERT (MiniLM's vocabulary) for tests."""
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    if architecture == "bert":
        return tiny_bert(vocab_size, hidden, seed=seed)
    torch.manual_seed(seed)
    if architecture == "roberta":
        config = RobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=2 * hidden, max_position_embeddings=514, pad_token_id=0)
        return RobertaModel(config)
    if architecture == "distilbert":
        config = DistilBertConfig(vocab_size=vocab_size, dim=hidden, n_layers=2, n_heads=2, hidden_dim=2 * hidden)
        return DistilBertModel(config)
    raise ValueError(f"unknown architecture {architecture!r}: bert, roberta or distilbert")


def tiny_bert(vocab_size: int = 30522, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> BertModel:
    """A small random-initialised BERT for fast tests (same vocabulary as MiniLM's tokenizer)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
    )
    return BertModel(config)
