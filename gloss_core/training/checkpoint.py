"""Training checkpoints: everything a resumed run needs to end with the same metrics.

A checkpoint is one `state.pt` file in a folder, written atomically and read with
`torch.load(..., weights_only=True)` (tensors, numbers, strings, lists and dicts only).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FILE = "state.pt"


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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, folder / FILE)
    return folder / FILE


def load_checkpoint(folder: str | Path, map_location="cpu") -> dict:
    path = Path(folder) / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    return torch.load(path, map_location=map_location, weights_only=True)
