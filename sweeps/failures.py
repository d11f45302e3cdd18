"""Why a trial failed, in one line: its error trace from Tune, shortened to the exception and message."""

from __future__ import annotations

import os
import re


def error_text(trial) -> str:
    """The trial's error trace: the driver's local copy is written at once; storage may lag."""
    local = trial.error_file
    if local and os.path.isfile(local):
        with open(local, encoding="utf-8", errors="replace") as f:
            return f.read()
    try:
        return str(trial.get_error() or trial.get_pickled_error() or "unknown error")
    except Exception as err:  # noqa: BLE001 - never let error reporting fail the sweep
        return f"unknown error ({type(err).__name__} while reading the trace)"


def error_reason(trace: str, limit: int = 200) -> str:
    """The one line of a trace a reader needs: the exception and its message, shortened."""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    found = next((line for line in reversed(lines) if re.match(r"^[\w.]*(Error|Exception|Failed)\b", line)), None)
    if found is None:
        found = next((line for line in lines if re.match(r"^[\w.]*(Error|Exception)", line)), lines[-1] if lines else "")
    found = re.sub(r"\x1b\[[0-9;]*m|\[\d+m", "", found)
    return found if len(found) <= limit else found[:limit - 3] + "..."
