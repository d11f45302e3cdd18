"""Where results come from and where they go, with no dependency beyond the standard library:
the git commit of the code, the versions of the packages that matter, the default MLflow store,
and URIs with their passwords hidden. The sweeps and the analysis both read it.
"""

from __future__ import annotations

import logging
import os
import re
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


def default_tracking_uri() -> str:
    """The MLflow store used when none is given: `./mlflow.db`, a SQLite file."""
    return f"sqlite:///{os.path.abspath('mlflow.db')}"


def redact(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://user:***@host`.

    >>> redact("postgresql://gloss:s3cret@db:5432/mlflow")
    'postgresql://gloss:***@db:5432/mlflow'
    """
    return re.sub(r"(://[^/:@\s]+):[^@/\s]+@", r"\1:***@", str(text))


def sqlite_database(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///FILE` tracking URI (relative, or absolute with four
    slashes); None for any other store."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def quiet_mlflow() -> None:
    """No artifact-download progress bars, no "View run ... at URL" line per finished run (an
    `mlflow server` store prints one for each), and no INFO lines from MLflow on the console (the
    commands print their own progress); warnings and errors still show."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow sets its loggers' level when it is first imported (INFO unless this says otherwise),
    # so a store created after an import here would still print its migrations
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
