"""Where a result came from: the git commit of the code and the versions of the packages that matter.

Recorded by a sweep when it starts and printed under every table and figure of the analysis.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("gloss", "torch", "transformers", "ray", "optuna", "mlflow", "numpy", "scipy", "pandas")
REPO = Path(__file__).resolve().parents[1]


def git_commit(folder: Path = REPO) -> str:
    """The commit of the checkout holding this code, with "+dirty" for uncommitted changes;
    "unknown" outside a git checkout (an installed wheel, a Docker image without .git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=folder, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
