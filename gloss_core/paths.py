"""Checks that a place the run will write to is usable, made before any work starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gloss_core.errors import UserError


def writable_folder(path: Path | str, what: str, shown: Path | None = None) -> None:
    """`path` is, or can become, a folder this process can write to (nothing is left behind: a
    temporary file is made and removed in its nearest existing folder);
    an error names `shown` (default: `path`), the value the user gave."""
    path = Path(path).expanduser()
    shown = path if shown is None else shown
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {shown}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {shown}: {probe} is not writable")
    try:  # what the mode bits do not say: a read-only mount, a virtual filesystem, a full quota
        with tempfile.TemporaryFile(dir=probe, prefix=".gloss-write-check-"):
            pass
    except OSError as err:
        raise UserError(f"{what} {shown}: {probe} cannot be written ({err.strerror or err})") from None


def writable_file(path: Path | str, what: str) -> None:
    """`path` can be written as a file: not a folder, and its folder writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder; give a file name")
    writable_folder(path.parent, what, shown=path)
