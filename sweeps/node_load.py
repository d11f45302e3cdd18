"""How many trials ran beside each trial on its node: what its seconds per epoch depend on besides
its loss. Kept by the trial logger on Tune's event loop; speed verdicts need equal conditions."""

from __future__ import annotations


class NodeLoad:
    def __init__(self):
        self.active: dict[str, str | None] = {}  # running trial id -> its node's IP (None until it reports)
        self.counts: dict[str, set[int]] = {}  # trial id -> trials on its node at each of its results

    def started(self, trial_id: str) -> None:
        self.active[trial_id] = None

    def reported(self, trial_id: str, node_ip: str | None) -> None:
        self.active[trial_id] = node_ip
        beside = sum(1 for other in self.active.values() if other in (node_ip, None))
        self.counts.setdefault(trial_id, set()).add(beside)

    def ended(self, trial_id: str, node_ip: str | None) -> dict[str, str]:
        """The trial's conditions as tags: its node and how many trials ran on that node at its
        reports ("2", or "1-4" when it changed)."""
        self.active.pop(trial_id, None)
        counts = self.counts.pop(trial_id, set())
        out = {"node": node_ip} if node_ip else {}
        if counts:
            low, high = min(counts), max(counts)
            out["concurrency"] = str(low) if low == high else f"{low}-{high}"
        return out
