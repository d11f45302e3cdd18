"""Mean ± sample standard deviation over seeds: the one helper behind the sweep's summary table
and every table of the analysis."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float  # sample std (ddof = 1); NaN for fewer than 2 values
    n: int

    def format(self, scale: float = 1.0, decimals: int = 2) -> str:
        """'mean ± std' scaled (100 for percentages); '–' for an undefined part."""
        def part(value: float) -> str:
            return "–" if math.isnan(value) else f"{scale * value:.{decimals}f}"

        return f"{part(self.mean)} ± {part(self.std)}"


def mean_std(values) -> MeanStd:
    """Mean, sample std (ddof = 1) and count of the finite-or-not numbers given (NaNs are skipped)."""
    numbers = [float(v) for v in values if not math.isnan(float(v))]
    if not numbers:
        return MeanStd(math.nan, math.nan, 0)
    std = statistics.stdev(numbers) if len(numbers) > 1 else math.nan
    return MeanStd(statistics.fmean(numbers), std, len(numbers))
