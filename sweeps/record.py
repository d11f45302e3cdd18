"""What a sweep records about itself, in its `summary` run, when it starts: the spec (`spec.json`,
passwords redacted), the git commit and the package versions. The runner writes it; `gloss sweep
status` and the analysis read it back, re-validated with the spec model.

Light on purpose (no Ray, no torch): the analysis imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pydantic import ValidationError

from gloss_core.provenance import git_commit, package_versions, redact
from sweeps.spec import SweepSpec

SPEC_FILE = "spec.json"


@dataclass
class SweepRecord:
    """A sweep's record; `spec` is None when none was recorded or it no longer validates (`problem` says)."""

    name: str
    spec: SweepSpec | None = None
    git_commit: str = "unknown"
    package_versions: dict = field(default_factory=dict)
    problem: str | None = None


def _find(client, experiment_id: str, sweep: str):
    found = client.search_runs([experiment_id], f"tags.sweep = '{sweep}' and tags.kind = 'summary'", max_results=1)
    return found[0] if found else None


def summary_run(client, experiment_id: str, spec: SweepSpec, identity: dict[str, str] | None = None) -> str:
    """The sweep's summary run: found again on resume, else created with the spec, commit and
    versions. `identity`: tags naming the sweep's storage folder (set on a run from before them)."""
    found = _find(client, experiment_id, spec.name)
    if found is not None:
        for key, value in (identity or {}).items():
            if key not in found.data.tags:
                client.set_tag(found.info.run_id, key, value)
        return found.info.run_id
    tags = {"sweep": spec.name, "kind": "summary", "phase": "summary", "git_commit": git_commit(),
            "package_versions": json.dumps(package_versions()), **(identity or {})}
    run_id = client.create_run(experiment_id, run_name="summary", tags=tags).info.run_id
    recorded = spec.model_dump(mode="json", by_alias=True)
    recorded["tracking_uri"] = redact(recorded["tracking_uri"]) if recorded.get("tracking_uri") else None
    client.log_dict(run_id, recorded, SPEC_FILE)
    return run_id


def read_record(client, experiment_id: str, sweep: str) -> SweepRecord:
    """The record of sweep `sweep` in that experiment (an empty one for a sweep from before records)."""
    run = _find(client, experiment_id, sweep)
    if run is None:
        return SweepRecord(sweep)
    versions = run.data.tags.get("package_versions")
    record = SweepRecord(sweep, None, run.data.tags.get("git_commit", "unknown"), json.loads(versions) if versions else {})
    try:
        with open(client.download_artifacts(run.info.run_id, SPEC_FILE), encoding="utf-8") as f:
            raw = json.load(f)
    except Exception:  # noqa: BLE001 - a sweep from before the spec was recorded
        record.problem = f"sweep {sweep}: no {SPEC_FILE} recorded; spec-based figures are left out"
        return record
    try:
        record.spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        record.problem = (f"sweep {sweep}: its recorded {SPEC_FILE} does not validate against this version's spec "
                          f"model ({where}: {first['msg']}); spec-based figures are left out")
    return record
