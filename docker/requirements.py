"""Print the requirements of the project and of the named extras, one a line, from pyproject.toml:
the image installs them in a layer of its own, which only a change to pyproject.toml rebuilds.

    python requirements.py pyproject.toml cluster,demo > requirements.txt
"""

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no extra(s) {unknown}; it has {sorted(optional)}")
    return [*project["dependencies"], *(r for extra in extras for r in optional[extra])]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], [e for e in sys.argv[2].split(",") if e])))
