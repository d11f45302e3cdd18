"""The docs keep up with the code.

- Every `TrainConfig` field has a row in docs/training.md, with the code's option, type, default
  and help text.
- Every key of a sweep spec (each pydantic model of `sweeps/spec.py` and `sweeps/sensitivity.py`,
  and every perturbable parameter) has a row in docs/sweeps.md, with the code's default.
- The README stays a front door (at most 1,500 words) that links every page of docs/.
- Every relative link in the README and docs/ resolves, anchors included.

The convention: a model's section is a Markdown heading that ends in the model's name in
backticks and parentheses, for example "### `search` (`Search`)". Each field of the model is a
row of a table in that section, whose first cell is the field's name in YAML (the alias where a
field has one, such as Distribution's `int`) in backticks. The default cell starts with the
default in backticks, written as YAML (`null`, `false`, `{cpu: 1.0, gpu: 0.0}`), or with
"required".
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gloss_core.config import TrainConfig
from sweeps.sensitivity import PERTURBABLE, Sensitivity
from sweeps.spec import Asha, Distribution, LossVariant, Replicate, Resources, Search, SweepSpec

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SPEC_MODELS = [SweepSpec, LossVariant, Distribution, Search, Asha, Resources, Replicate, Sensitivity]
MAX_README_WORDS = 1500


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def headings(text: str) -> list[tuple[int, str, int]]:
    """(level, heading text, line index) of every Markdown heading outside fenced code."""
    found, fenced = [], False
    for i, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) (.+?)\s*$", line)):
            found.append((len(m[1]), m[2], i))
    return found


def section(path: Path, name: str) -> str:
    """The body of the one section of `path` whose heading ends in (`name`)."""
    text = path.read_text()
    lines = text.splitlines()
    marks = headings(text)
    hits = [k for k, (_, title, _) in enumerate(marks) if title.endswith(f"(`{name}`)")]
    assert len(hits) == 1, f"{path.name}: want one heading ending in (`{name}`), found {len(hits)}"
    level, _, start = marks[hits[0]]
    end = next((line for lvl, _, line in marks[hits[0] + 1:] if lvl <= level), len(lines))
    return "\n".join(lines[start + 1:end])


def cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def rows(body: str) -> dict[str, dict[str, str]]:
    """Every table row of `body` whose first cell is one name in backticks: name -> {column: cell}."""
    out: dict[str, dict[str, str]] = {}
    lines = body.splitlines()
    for i, line in enumerate(lines):
        if not (line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())):
            continue  # not a table's header row
        header = cells(line)
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            values = cells(row)
            if m := re.fullmatch(r"`([^`]+)`", values[0]):
                assert m[1] not in out, f"{m[1]} has two rows"
                out[m[1]] = dict(zip(header, values))
    return out


def documented_default(cell: str):
    m = re.match(r"`([^`]*)`", cell)
    assert m, f"the default cell {cell!r} starts with neither a value in backticks nor 'required'"
    return yaml.safe_load(m[1])


def yaml_key(name: str, field) -> str:
    return field.alias or name


@pytest.mark.parametrize("model", SPEC_MODELS, ids=lambda m: m.__name__)
def test_every_spec_key_is_documented_with_its_default(model):
    table = rows(section(DOCS / "sweeps.md", model.__name__))
    keys = {yaml_key(name, f): f for name, f in model.model_fields.items()}
    assert not sorted(set(keys) - set(table)), f"{model.__name__}: keys without a row in docs/sweeps.md"
    assert not sorted(set(table) - set(keys)), f"{model.__name__}: rows in docs/sweeps.md that are no key"
    for key, f in keys.items():
        cell = table[key]["default"]
        if f.is_required():
            assert cell.startswith("required"), f"{model.__name__}.{key} is required; docs say {cell!r}"
            continue
        default = f.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(by_alias=True)
        assert documented_default(cell) == default, f"{model.__name__}.{key}: docs say {cell!r}, code {default!r}"


def test_every_perturbable_parameter_is_documented():
    table = rows(section(DOCS / "sweeps.md", "PERTURBABLE"))
    assert sorted(table) == sorted(PERTURBABLE)
    for name, rule in PERTURBABLE.items():
        assert table[name]["kind of step"] == rule.kind, name


def test_every_train_config_field_is_documented_with_its_default():
    table = rows(section(DOCS / "training.md", "TrainConfig"))
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert not sorted(set(fields) - set(table)), "TrainConfig fields without a row in docs/training.md"
    assert not sorted(set(table) - set(fields)), "rows in docs/training.md that are no TrainConfig field"
    for name, f in fields.items():
        row = table[name]
        assert row["option"].startswith(f"`--{name.replace('_', '-')}"), f"{name}: option {row['option']!r}"
        assert documented_default(row["default"]) == f.default, f"{name}: docs say {row['default']!r}, code {f.default!r}"
        assert row["type"] == str(f.type).replace(" | None", " or null").replace(" | ", " or "), f"{name}: type {row['type']!r}"
        assert row["help"].replace("\\|", "|") == f.metadata["help"], f"{name}: help differs from the field's metadata"


def test_the_readme_is_a_front_door_to_every_page():
    text = README.read_text()
    words = len(text.split())
    assert words <= MAX_README_WORDS, f"README.md has {words} words (at most {MAX_README_WORDS})"
    linked = {target.split("#")[0] for target in links(text)}
    for page in sorted(DOCS.glob("*.md")):
        assert f"docs/{page.name}" in linked, f"README.md does not link docs/{page.name}"


def links(text: str) -> list[str]:
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", without_code_blocks(text))


def slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title, _ in headings(path.read_text()):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    for target in links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link {target!r}: {file} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: link {target!r}: no heading #{anchor} in {file.name}"
