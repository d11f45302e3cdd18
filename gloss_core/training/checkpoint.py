"""Training checkpoints: what an exact resume needs, and nothing twice.

A checkpoint is one `state.pt` in a folder: the current weights, the optimiser, the scheduler, the
loss state (the mask generator), the RNG states, the epoch, the history, sigma, and the number and
score of the best epoch. It is written to a temporary name and renamed, so a crash mid-write never
leaves a file that loads wrongly, and it is read with `torch.load(..., weights_only=True)`.

The best epoch's weights are not a second copy while the best epoch is the current one: they are
the current weights. Once training moves past the best epoch, they live in a `BestWeights` file
beside the checkpoints, one per epoch (`best.epoch0003.safetensors`), written when that epoch is
first left behind. A run given no such location (a bare `train()`) keeps them in `state.pt` instead
(`best_state`), so its checkpoint folder stands alone.

Every kill point is resumable: the checkpoint last handed over (the one a resume starts from)
always finds the file it names. Making checkpoint k (`Run.state`, then `save_checkpoint`, then
`report`, which returns only once Tune, or `gloss train --checkpoint-dir`, holds its copy):

1. if k names a best epoch whose file this run has not written, that file is written (a temporary
   name, then a rename). Checkpoint k-1, the last handed over, names its own file, which is not
   touched: a kill here resumes from k-1 with its file.
2. every other epoch file goes but the one k-1 names and the one k names (at most two files; the
   first time in a process the folder is listed, so what a killed attempt left goes too). Nothing
   k-1 needs is deleted, so a kill here resumes from k-1.
3. `state.pt` is written to a temporary name and renamed; a kill leaves k-1 the latest.
4. `report` hands the folder over; a kill during the copy leaves k-1 the latest, a kill after it k,
   whose file was written in step 1 and is deleted only at step 2 of a checkpoint after k+1.

A resumed run treats the checkpoint it starts from as k-1. `BestWeights.delete` deletes every file
of a location (a trial that ended).
"""

from __future__ import annotations

import json
import os
import re
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
    """The best epoch's weights, one safetensors file per epoch beside `location` (a local path or
    any URI pyarrow's filesystems take: `s3://bucket/key`, `gs://...`): `best.safetensors` gives
    `best.epoch0003.safetensors`. Each file also records its epoch in its metadata, so a resumed run
    loads exactly the weights its checkpoint names. `keep` deletes the files no checkpoint still
    needs (the module's docstring has the sequence); `delete` deletes them all."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self._fs = None
        self._known: set[int] | None = None  # the epoch files there (None: not listed yet)

    def _filesystem(self):
        if self._fs is None:
            import pyarrow.fs

            uri = self.location if "://" in self.location else os.path.abspath(self.location)
            self._fs, self._path = pyarrow.fs.FileSystem.from_uri(uri)
        return self._fs, self._path

    def _file(self, epoch: int) -> str:
        stem, ext = os.path.splitext(self._filesystem()[1])
        return f"{stem}.epoch{epoch:04d}{ext or '.safetensors'}"

    def _write(self, path: str, data: bytes) -> None:
        fs, _ = self._filesystem()
        fs.create_dir(os.path.dirname(path), recursive=True)
        with fs.open_output_stream(path + ".tmp") as out:
            out.write(data)
        fs.move(path + ".tmp", path)

    def save(self, weights: dict[str, torch.Tensor], epoch: int) -> None:
        from safetensors.torch import save

        data = save({k: v.detach().cpu().clone() for k, v in weights.items()}, metadata={"epoch": str(epoch)})
        self._write(self._file(epoch), data)
        if self._known is not None:
            self._known.add(epoch)

    def load(self, epoch: int) -> dict[str, torch.Tensor]:
        """The weights of `epoch`: its own file, else the single file at `location` that gloss wrote
        before files were named by epoch (copied to the epoch's name, so `keep` may delete it)."""
        from safetensors.torch import load

        fs, path = self._filesystem()
        try:
            with fs.open_input_stream(self._file(epoch)) as f:
                data, legacy = f.read(), False
        except (FileNotFoundError, OSError) as err:
            try:
                with fs.open_input_stream(path) as f:
                    data, legacy = f.read(), True
            except (FileNotFoundError, OSError):
                raise CheckpointError(f"{self._file(epoch)}: the best epoch's weights are missing ({err})") from err
        found = _metadata(data).get("epoch")
        if found != str(epoch):
            raise CheckpointError(f"{path if legacy else self._file(epoch)}: holds the weights of epoch {found}, "
                                  f"the checkpoint names epoch {epoch}")
        if legacy:
            self._write(self._file(epoch), data)
        return load(data)

    def _files(self) -> dict[str, int | None]:
        """Every file of this location there: path -> its epoch (None: the single file of old, or a
        temporary left by a write that did not finish)."""
        import pyarrow.fs

        fs, path = self._filesystem()
        stem, ext = os.path.splitext(os.path.basename(path))
        named = re.compile(rf"{re.escape(stem)}\.epoch(\d+){re.escape(ext or '.safetensors')}(\.tmp)?")
        found = {}
        for info in fs.get_file_info(pyarrow.fs.FileSelector(os.path.dirname(path), allow_not_found=True)):
            name = os.path.basename(info.path)
            if name in (os.path.basename(path), os.path.basename(path) + ".tmp"):
                found[info.path] = None
            elif (match := named.fullmatch(name)) is not None:
                found[info.path] = None if match.group(2) else int(match.group(1))
        return found

    def keep(self, epochs: set[int]) -> None:
        """Delete every epoch's file but those of `epochs`. The first call lists the folder (what a
        killed attempt left goes too); later ones delete by name what this object knows is there."""
        fs, _ = self._filesystem()
        if self._known is None:
            stale = [p for p, epoch in self._files().items() if epoch not in epochs]
            self._known = set(epochs)
        else:
            stale = [self._file(epoch) for epoch in self._known - epochs]
            self._known &= epochs
        for name in stale:
            try:
                fs.delete_file(name)
            except (FileNotFoundError, OSError):
                pass

    def delete(self) -> None:
        """Delete every file of this location (the trial ended)."""
        self._known = None
        self.keep(set())


def _metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's header (8-byte length, then JSON)."""
    if len(data) < 8:
        return {}
    (length,) = struct.unpack("<Q", data[:8])
    try:
        return json.loads(data[8:8 + length]).get("__metadata__", {}) or {}
    except ValueError:
        return {}
