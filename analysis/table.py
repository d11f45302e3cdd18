"""One table, three renderings with the same numbers: Markdown, LaTeX (booktabs) and CSV.

A table holds display strings (`cells`), the numbers behind them rounded as shown (`numbers`,
what the CSV holds), marks for the best and second-best cells, notes and a provenance footer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gloss_core.spread import MeanStd

LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def fmt(value: float | None, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{decimals}f}"


def pm(mean: float, std: float, decimals: int) -> str:
    """'mean ± std' with a fixed number of decimals (std '–' when undefined, n = 1)."""
    return MeanStd(mean, std, 0).format(decimals=decimals)


def latex_escape(text: str) -> str:
    out = "".join(LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return (out.replace("±", r"$\pm$").replace("–", "--").replace("Δ", r"$\Delta$").replace("†", r"$^\dagger$")
            .replace("≥", r"$\geq$").replace("≤", r"$\leq$").replace("α", r"$\alpha$").replace("↑", r"$\uparrow$")
            .replace("↓", r"$\downarrow$").replace("−", "--").replace("×", r"$\times$"))


@dataclass
class Table:
    name: str  # file stem
    caption: str
    cells: pd.DataFrame  # display strings; row-label columns first
    numbers: pd.DataFrame  # the same numbers, rounded as displayed, one column per quantity
    marks: dict[tuple[int, str], str] = field(default_factory=dict)  # (row position, column) -> best | second
    notes: list[str] = field(default_factory=list)
    footer: str = ""

    def marked(self, bold, underline, escape=str) -> pd.DataFrame:
        """The cells escaped for a format, then the marked ones wrapped in `bold` / `underline`."""
        cells = self.cells.copy().astype(str).map(escape)
        for (row, column), mark in self.marks.items():
            text = cells.iloc[row][column]
            cells.iloc[row, cells.columns.get_loc(column)] = bold(text) if mark == "best" else underline(text)
        return cells

    def markdown(self, footer: bool = True) -> str:
        cells = self.marked(lambda t: f"**{t}**", lambda t: f"<u>{t}</u>")
        parts = [f"**{self.caption}**", "", cells.to_markdown(index=False, disable_numparse=True)]
        if self.notes:
            parts += ["", *[f"- {note}" for note in self.notes]]
        if self.footer and footer:
            parts += ["", f"<sub>{self.footer}</sub>"]
        return "\n".join(parts) + "\n"

    def latex(self) -> str:
        cells = self.marked(lambda t: rf"\textbf{{{t}}}", lambda t: rf"\underline{{{t}}}", latex_escape)
        columns = "l" * len(cells.columns)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(self.caption)}}}",
                 rf"\label{{tab:{self.name}}}", r"\small", rf"\begin{{tabular}}{{{columns}}}", r"\toprule",
                 " & ".join(latex_escape(c) for c in cells.columns) + r" \\", r"\midrule"]
        lines += [" & ".join(row) + r" \\" for row in cells.itertuples(index=False, name=None)]
        lines += [r"\bottomrule", r"\end{tabular}"]
        for note in self.notes + ([self.footer] if self.footer else []):
            lines.append(rf"\par\footnotesize {latex_escape(note)}")
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{self.name}.md", folder / f"{self.name}.tex", folder / f"{self.name}.csv"]
        paths[0].write_text(self.markdown(), encoding="utf-8")
        paths[1].write_text(self.latex(), encoding="utf-8")
        self.numbers.to_csv(paths[2], index=False)
        return paths
