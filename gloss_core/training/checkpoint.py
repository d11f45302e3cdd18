"""Training checkpoints: what an exact resume needs, and nothing twice.

A checkpoint is one `state.pt` in a folder: the current weights, the optimiser, the scheduler, the
loss state (the mask generator), the RNG states, the epoch, the history, sigma, and the number and
score of the best epoch. It is written to a temporary name and renamed, so a crash mid-write never
leaves a file that loads wrongly, and it is read with `torch.load(..., weights_only=True)`.

The best epoch's weights are not a second copy while the best epoch is the current one: they are
the current weights. Once training moves past the best epoch, they live in one `BestWeights` file
beside the checkpoints, written when that epoch is first left behind and rewritten only when a
newer best is. A run given no such file (a bare `train()`) keeps them in `state.pt` instead
(`best_state`), so its checkpoint folder stands alone.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from gloss_core.errors import UserError

FILE = "state.pt"
BEST_FILE = "best.safetensors"  # beside the kept checkpoint of `gloss train --checkpoint-dir`


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, state: dict) -> Path:
    """Write `state.pt` atomically. The zip records skip their CRC-32, which halves the write time;
    a partial write never replaces the file, and a truncated one fails to load (no central directory)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (FILE + ".tmp")
    crc = getattr(torch.serialization, "get_crc32_options", lambda: True)()
    if hasattr(torch.serialization, "set_crc32_options"):
        torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, tmp)
    finally:
        if hasattr(torch.serialization, "set_crc32_options"):
            torch.serialization.set_crc32_options(crc)
    os.replace(tmp, folder / FILE)
    return folder / FILE


def load_checkpoint(folder: str | Path, map_location="cpu") -> dict:
    path = Path(folder) / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: the checkpoint cannot be read ({type(err).__name__}: {str(err)[:200]}); "
                              "it is truncated or not a gloss checkpoint") from err


class BestWeights:
    """The best epoch's weights in one safetensors file at `location`: a local path or any URI
    pyarrow's filesystems take (`s3://bucket/key`, `gs://...`). The file records its epoch, so a
    resumed run loads exactly the weights its checkpoint names."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self._fs = None

    def _filesystem(self):
        if self._fs is None:
            import pyarrow.fs

            uri = self.location if "://" in self.location else os.path.abspath(self.location)
            self._fs, self._path = pyarrow.fs.FileSystem.from_uri(uri)
        return self._fs, self._path

    def save(self, weights: dict[str, torch.Tensor], epoch: int) -> None:
        from safetensors.torch import save

        fs, path = self._filesystem()
        data = save({k: v.detach().cpu().clone() for k, v in weights.items()}, metadata={"epoch": str(epoch)})
        fs.create_dir(os.path.dirname(path), recursive=True)
        with fs.open_output_stream(path + ".tmp") as out:
            out.write(data)
        fs.move(path + ".tmp", path)

    def load(self, epoch: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        fs, path = self._filesystem()
        try:
            with fs.open_input_stream(path) as f:
                data = f.read()
        except (FileNotFoundError, OSError) as err:
            raise CheckpointError(f"{self.location}: the best epoch's weights are missing ({err})") from err
        found = _metadata(data).get("epoch")
        if found != str(epoch):
            raise CheckpointError(f"{self.location}: holds the weights of epoch {found}, the checkpoint names "
                                  f"epoch {epoch}")
        return load(data)

    def delete(self) -> None:
        fs, path = self._filesystem()
        for name in (path, path + ".tmp"):
            try:
                fs.delete_file(name)
            except (FileNotFoundError, OSError):
                pass


def _metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's header (8-byte length, then JSON)."""
    if len(data) < 8:
        return {}
    (length,) = struct.unpack("<Q", data[:8])
    try:
        return json.loads(data[8:8 + length]).get("__metadata__", {}) or {}
    except ValueError:
        return {}
