"""Data sources, label maps, bad input, tokenisation cache and length-grouped batches."""

import json
import os
import stat
import time
from pathlib import Path

import pytest
import torch

from gloss_core.data import tokens
from gloss_core.data.batching import Batches
from gloss_core.data.tokens import cache_dir, tokenize
from gloss_core.data.splits import Split
from gloss_core.data import DataError, load_csv_splits, load_hf_splits
from gloss_core.models import load_tokenizer


def _write(folder: Path, name: str, text: str, encoding="utf-8"):
    (folder / f"{name}.csv").write_bytes(text.encode(encoding) if isinstance(text, str) else text)


def _folder(tmp_path, train="text,label\na,0\nb,1\n", val=None, test=None):
    for name, text in (("train", train), ("val", val or train), ("test", test or train)):
        _write(tmp_path, name, text)
    return tmp_path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def test_csv_errors_name_file_row_and_column(tmp_path):
    good = "text,label\na,0\nb,1\n"
    _folder(tmp_path, good)
    assert load_csv_splits(tmp_path).num_classes == 2
    _write(tmp_path, "val", "text,label\na,0\nc,7\n")
    with pytest.raises(DataError, match=r"val\.csv, column 'label': label\(s\) \['7'\] absent from train"):
        load_csv_splits(tmp_path)
    _write(tmp_path, "val", good)
    _write(tmp_path, "test", "txt,label\na,0\n")
    with pytest.raises(DataError, match=r"test\.csv: missing column\(s\) \['text'\]"):
        load_csv_splits(tmp_path)
    _write(tmp_path, "test", "text,label\na,0\n ,1\n")
    with pytest.raises(DataError, match=r"test\.csv, row 3, column 'text': empty text"):
        load_csv_splits(tmp_path, empty_text="error")
    dropped = load_csv_splits(tmp_path)  # default: drop, with a count
    assert dropped.test.texts == ["a"] and dropped.test.dropped_empty == 1
    assert any("test.csv: dropped 1 rows with an empty 'text' column" in note for note in dropped.notes)
    _write(tmp_path, "test", "text,label\n,0\n")
    with pytest.raises(DataError, match=r"test\.csv: the split is empty after dropping 1 empty rows"):
        load_csv_splits(tmp_path)
    _write(tmp_path, "test", "text,label\na,\n")
    with pytest.raises(DataError, match=r"test\.csv, row 2, column 'label': empty label"):
        load_csv_splits(tmp_path)
    _write(tmp_path, "test", good)
    _write(tmp_path, "train", "text,label\na,0\nb,0\n")
    with pytest.raises(DataError, match="single class"):
        load_csv_splits(tmp_path)
    _write(tmp_path, "train", b"text,label\na,0\nb\xff\xfe,1\n")
    with pytest.raises(DataError, match=r"train\.csv, line 3: undecodable bytes"):
        load_csv_splits(tmp_path)
    (tmp_path / "train.csv").unlink()
    with pytest.raises(DataError, match=r"train\.csv: file not found"):
        load_csv_splits(tmp_path)
    with pytest.raises(DataError, match="data folder not found"):
        load_csv_splits(tmp_path / "nope")


def test_string_labels_share_one_map(tmp_path):
    _folder(tmp_path, "text,label\na,pos\nb,neg\nc,neu\n", val="text,label\nd,neu\n", test="text,label\ne,pos\n")
    splits = load_csv_splits(tmp_path)
    assert splits.label_names == ["neg", "neu", "pos"]
    assert splits.val.labels.tolist() == [1] and splits.test.labels.tolist() == [2]


def test_integer_labels_sort_numerically(tmp_path):
    _folder(tmp_path, "text,label\na,10\nb,2\nc,1\n")
    assert load_csv_splits(tmp_path).label_names == ["1", "2", "10"]


def test_text_pairs_become_token_type_ids(tmp_path, tokenizer):
    pair = "text,text_pair,label\nwhat is it?,it is a cat,0\nwho is he?,the sky is blue,1\n"
    _folder(tmp_path, pair)
    splits = load_csv_splits(tmp_path)
    assert splits.train.text_pairs == ["it is a cat", "the sky is blue"]
    inputs, labels = next(iter(Batches(splits.train, tokenizer, batch_size=2)))
    assert inputs["token_type_ids"].max() == 1 and labels.tolist() == [0, 1]
    _write(tmp_path, "val", "text,label\na,0\n")
    with pytest.raises(DataError, match="'text_pair' is in"):
        load_csv_splits(tmp_path)


def test_hf_loader_with_local_files_and_column_mapping(tmp_path):
    for name, rows in (("train", "q,a,y\nx?,yes,good\nz?,no,bad\n"), ("val", "q,a,y\nw?,ok,bad\n"),
                       ("test", "q,a,y\nv?,sure,good\n")):
        _write(tmp_path, name, rows)
    files = {s: str(tmp_path / f"{s}.csv") for s in ("train", "val", "test")}
    splits = load_hf_splits("csv", data_files=files, splits=("train", "val", "test"), text_column="q",
                            text_pair_column="a", label_column="y")
    assert splits.label_names == ["bad", "good"]
    assert splits.train.texts == ["x?", "z?"] and splits.train.text_pairs == ["yes", "no"]
    with pytest.raises(DataError, match=r"csv\[train\]: missing column 'text'"):
        load_hf_splits("csv", data_files=files, splits=("train", "val", "test"))


def test_length_grouped_batches_cover_every_row_once_and_pad_less(tokenizer):
    splits = load_csv_splits(Path(__file__).resolve().parents[2] / "shared" / "data" / "MR", limit=600)
    grouped = Batches(splits.train, tokenizer, batch_size=16, shuffle_seed=3)
    for epoch in (0, 1):
        rows = sorted(r for batch in grouped.order(epoch) for r in batch)
        assert rows == list(range(600))
    assert grouped.order(0) == grouped.order(0) and grouped.order(0) != grouped.order(1)
    padded = sum(len(b) * max(int(grouped.lengths[r]) for r in b) for b in grouped.order(0))
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(600, generator=g).tolist()
    random_padded = sum(16 * max(int(grouped.lengths[r]) for r in perm[s:s + 16]) for s in range(0, 600, 16))
    assert padded < 0.8 * random_padded
    inputs, _ = grouped.collate(grouped.order(0)[0])
    assert inputs["input_ids"].shape[1] == max(int(grouped.lengths[r]) for r in grouped.order(0)[0])
    fixed = Batches(splits.train, tokenizer, batch_size=16, pad_to=128)
    assert next(iter(fixed))[0]["input_ids"].shape[1] == 128


def test_tokenisation_is_cached_on_disk(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path))
    splits = load_csv_splits(Path(__file__).resolve().parents[2] / "shared" / "data" / "MR", limit=50)
    first = Batches(splits.val, tokenizer, batch_size=8, max_length=32)
    files = list((cache_dir() / "tokens").glob("*.arrow"))
    assert len(files) == 1
    second = Batches(splits.val, tokenizer, batch_size=8, max_length=32)
    assert list((cache_dir() / "tokens").glob("*.arrow")) == files
    assert all(torch.equal(a, b) for a, b in zip(first.input_ids, second.input_ids))
    assert max(len(ids) for ids in first.input_ids) <= 32
    Batches(splits.val, tokenizer, batch_size=8, max_length=64)  # other settings: another cache file
    assert len(list((cache_dir() / "tokens").glob("*.arrow"))) == 2


@pytest.mark.parametrize("use_cache", [True, False])
def test_tokenising_never_hashes_the_tokenizer(tokenizer, tmp_path, monkeypatch, use_cache):
    """`datasets` fingerprints a `map` by pickling its function (and so the tokenizer) with dill:
    most of a small trial's time. The cache key is ours, so nothing may be hashed, hit or miss."""
    import datasets.fingerprint

    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path))
    splits = load_csv_splits(Path(__file__).resolve().parents[2] / "shared" / "data" / "MR", limit=20)
    expected = tokenizer(splits.val.texts, truncation=True, max_length=32)["input_ids"]

    def refuse(*args, **kwargs):
        raise AssertionError("datasets hashed the transform")

    monkeypatch.setattr(datasets.fingerprint.Hasher, "hash", refuse)
    for _ in range(2):  # a miss, then (cached) a hit
        batches = Batches(splits.val, tokenizer, batch_size=8, max_length=32, use_cache=use_cache)
        assert [ids.tolist() for ids in batches.input_ids] == expected


def test_a_tokenizer_is_loaded_once_per_folder_and_again_when_the_folder_changes(tmp_path):
    """A reused trial actor takes the loaded tokenizer; a folder whose files change is read anew."""
    load_tokenizer("minilm").save_pretrained(tmp_path)
    first = load_tokenizer(str(tmp_path))
    assert load_tokenizer(str(tmp_path)) is first
    config = tmp_path / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded is not first
    assert reloaded("a fine film")["input_ids"] == first("a fine film")["input_ids"]


PAIRS = Split(["what is it?", "who wrote this long and winding question about the weather?"],
              torch.tensor([0, 1]), ["it is a cat sitting on the mat by the door", "nobody"])


@pytest.mark.parametrize("use_cache", [True, False])
def test_tokenised_pairs_equal_the_tokenizer_truncated_hit_or_miss(tokenizer, tmp_path, monkeypatch, use_cache):
    """Ids and token type ids of text pairs, truncated as a pair, from the tokenizer itself: on the
    miss and on the hit; the cache file readable as the umask allows, no temporary file left."""
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path))
    expected = tokenizer(PAIRS.texts, PAIRS.text_pairs, truncation=True, max_length=12)
    assert max(len(ids) for ids in expected["input_ids"]) == 12  # the truncation is exercised
    for _ in range(2):
        input_ids, token_type_ids = tokenize(PAIRS, tokenizer, max_length=12, use_cache=use_cache)
        assert [ids.tolist() for ids in input_ids] == expected["input_ids"]
        assert [types.tolist() for types in token_type_ids] == expected["token_type_ids"]
    files = list((tmp_path / "tokens").glob("*")) if use_cache else []
    assert [f.suffix for f in files] == ([".arrow"] if use_cache else [])
    if use_cache:
        umask = os.umask(0o022)
        os.umask(umask)
        assert stat.S_IMODE(files[0].stat().st_mode) == 0o666 & ~umask


def test_an_unreadable_cache_file_is_tokenised_and_written_again(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path))
    first, _ = tokenize(PAIRS, tokenizer, max_length=12)
    (cached,) = (tmp_path / "tokens").glob("*.arrow")
    cached.write_bytes(cached.read_bytes()[:40])  # cut short, as by a full disk
    again, _ = tokenize(PAIRS, tokenizer, max_length=12)
    assert [ids.tolist() for ids in again] == [ids.tolist() for ids in first]
    assert len(cached.read_bytes()) > 40  # rewritten whole


def test_a_cache_that_cannot_be_written_still_tokenises(tokenizer, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path))

    def full_disk(path, table):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokens, "_write_atomically", full_disk)
    input_ids, _ = tokenize(PAIRS, tokenizer, max_length=12)
    assert len(input_ids) == 2
    assert "tokens not cached" in caplog.text and "No space left" in caplog.text


def test_a_changed_tokenizer_folder_gets_new_tokens_not_the_cached_ones(tmp_path, monkeypatch):
    """The key is the tokenizer's definition, not its folder's name and vocabulary size: a folder
    whose tokenizer stops lower-casing tokenises anew."""
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tok"
    load_tokenizer("minilm").save_pretrained(folder)
    split = Split(["A Fine Film"], torch.tensor([0]))
    lowered, _ = tokenize(split, load_tokenizer(str(folder)), max_length=16)
    definition = json.loads((folder / "tokenizer.json").read_text())
    definition["normalizer"]["lowercase"] = False
    (folder / "tokenizer.json").write_text(json.dumps(definition))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    cased_tokenizer = load_tokenizer(str(folder))
    cased, _ = tokenize(split, cased_tokenizer, max_length=16)
    assert cased[0].tolist() == cased_tokenizer(["A Fine Film"], truncation=True, max_length=16)["input_ids"][0]
    assert cased[0].tolist() != lowered[0].tolist()
    assert len(list((tmp_path / "cache" / "tokens").glob("*.arrow"))) == 2


def test_temporary_files_of_killed_writers_are_removed_and_live_ones_kept(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path))
    folder = tmp_path / "tokens"
    folder.mkdir()
    stale, live = folder / "a.arrow.1.x.tmp", folder / "b.arrow.2.y.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    hours_ago = time.time() - 2 * tokens.STALE_TEMPORARY_S
    os.utime(stale, (hours_ago, hours_ago))
    tokenize(PAIRS, tokenizer, max_length=12)
    assert not stale.exists() and live.exists()
