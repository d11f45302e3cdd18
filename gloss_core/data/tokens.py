"""Tokenise a split once: batched tokenizer calls, cached on disk as an Arrow stream.

The cache lives under $GLOSS_CACHE (default ~/.cache/gloss)/tokens, one file per (texts, tokenizer
definition, max_length). Nothing is hashed but that key: `datasets.map`, used before, fingerprinted
its function by pickling the tokenizer, which cost a small trial most of its time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from pathlib import Path

import torch

from gloss_core.data.splits import Split


def cache_dir() -> Path:
    return Path(os.environ.get("GLOSS_CACHE", Path.home() / ".cache" / "gloss"))


CACHE_FORMAT = 2  # bump when the cached columns or their meaning change
_TOKENIZER_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # computed once per tokenizer


def _tokenizer_digest(tokenizer) -> str:
    """What decides a tokenizer's output: a fast tokenizer's whole definition (vocabulary,
    normaliser, pre-tokeniser, special-token template), less the truncation and padding each call
    sets; a slow tokenizer's name and size. So a folder whose tokenizer changes gets new tokens."""
    try:
        return _TOKENIZER_DIGESTS[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        described = json.dumps(definition, sort_keys=True)
    else:
        described = json.dumps([getattr(tokenizer, "name_or_path", ""), len(tokenizer)])
    digest = hashlib.sha256(described.encode()).hexdigest()
    try:
        _TOKENIZER_DIGESTS[tokenizer] = digest
    except TypeError:
        pass
    return digest


def _fingerprint(split: Split, tokenizer, max_length: int) -> str:
    """The cache key: the format, the tokenizer's definition, max_length, and every text (and pair)."""
    h = hashlib.sha256()
    pairs = split.text_pairs
    h.update(json.dumps([CACHE_FORMAT, _tokenizer_digest(tokenizer), max_length, len(split.texts),
                         pairs is not None]).encode())
    for texts in (split.texts, pairs or []):
        for text in texts:
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return h.hexdigest()[:32]


def tokenize(split: Split, tokenizer, max_length: int, use_cache: bool = True):
    """`(input_ids, token_type_ids or None)` per row, truncated at `max_length`; cached on disk
    under $GLOSS_CACHE (default ~/.cache/gloss) as an Arrow stream, keyed by the texts, the
    tokenizer's definition and max_length. The texts go to the tokenizer in batched calls; a hit
    reads the file back (memory-mapped), and a missing or unreadable file is tokenised and
    written again."""
    cached = cache_dir() / "tokens" / f"{_fingerprint(split, tokenizer, max_length)}.arrow" if use_cache else None
    table = _read(cached) if cached is not None else None
    if table is None:
        table = _encode(split, tokenizer, max_length)
        if cached is not None:
            try:
                _write_atomically(cached, table)
            except OSError as err:  # the cache only saves time: train on, and say why it is not kept
                logging.getLogger(__name__).warning("tokens not cached at %s: %s", cached, err)
    input_ids = [torch.tensor(ids) for ids in table.column("input_ids").to_pylist()]
    token_type_ids = None
    if "token_type_ids" in table.column_names:
        token_type_ids = [torch.tensor(t) for t in table.column("token_type_ids").to_pylist()]
    return input_ids, token_type_ids


ENCODE_ROWS = 10_000  # rows per tokenizer call: bounds the memory of a large split's encodings


def _encode(split: Split, tokenizer, max_length: int):
    import pyarrow as pa

    columns: dict[str, list] = {"input_ids": []}
    for start in range(0, len(split.texts), ENCODE_ROWS):
        pairs = split.text_pairs[start:start + ENCODE_ROWS] if split.text_pairs is not None else None
        encoded = tokenizer(split.texts[start:start + ENCODE_ROWS], pairs, truncation=True, max_length=max_length)
        for column in ("input_ids", "token_type_ids"):
            if column in encoded:
                columns.setdefault(column, []).extend(encoded[column])
    return pa.table(columns)


def _read(path: Path):
    """The cached table, or None when the file is missing or cannot be read (another user's, cut short)."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowInvalid):
        return None
    return table if "input_ids" in table.column_names else None


STALE_TEMPORARY_S = 3600  # a temporary file this old was left by a killed writer


def _write_atomically(path: Path, table) -> None:
    """`table` as an Arrow stream at `path`, via a temporary file in the same folder, so that trials
    tokenising the same split at once never read a half-written file. The file is readable by
    whoever may read the folder (the umask decides), as a shared $GLOSS_CACHE needs; temporary
    files that killed writers left behind are removed."""
    import time
    import uuid

    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob("*.tmp"):
        try:
            if time.time() - stale.stat().st_mtime > STALE_TEMPORARY_S:
                stale.unlink()
        except OSError:
            pass  # another writer's, or already gone
    temporary = path.parent / f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(handle, "wb") as out, pa.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
