"""How many trials Tune keeps pending (asking Ray for their resources) at once.

Tune reads `TUNE_MAX_PENDING_TRIALS_PG` when a `TuneController` starts (`Tuner.fit`). Unset, a
custom searcher such as `CellSearcher` gets 1 (the search sets no `max_concurrent_trials`, from
which Ray 2.60 would derive it: `CellSearcher` bounds each cell itself), so a large cluster would
fill one trial at a time (and an autoscaler would see one pending trial). The search sets it to
its concurrency (cells x `max_concurrent`) for the length of its fit; a phase without a
concurrency limit (the replicate grids) keeps Tune's own, and a value the user exported wins.
"""

from __future__ import annotations

import contextlib
import os

PENDING_TRIALS = "TUNE_MAX_PENDING_TRIALS_PG"


@contextlib.contextmanager
def pending_trials(limit: int | None):
    """Up to `limit` trials pending at once during the block (None: Tune's own choice)."""
    if limit is None or PENDING_TRIALS in os.environ:
        yield
        return
    os.environ[PENDING_TRIALS] = str(limit)
    try:
        yield
    finally:
        os.environ.pop(PENDING_TRIALS, None)
