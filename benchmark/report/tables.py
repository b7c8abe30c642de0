"""Rendering a methods x columns grid of cells as Markdown (tabulate), LaTeX (booktabs) and CSV rows.

A :class:`Cell` holds one aggregate (mean and sample std over seeds, how many seeds finished of
how many expected) and its decorations (bold for the best of its column, a significance mark).
Values print with one decimal; the best of a column is decided on the printed value, so equal
printed values are bold together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tabulate import tabulate

MARK_BETTER = "†"
MARK_WORSE = "‡"
_LATEX_MARKS = {MARK_BETTER: r"$^\dagger$", MARK_WORSE: r"$^\ddagger$"}
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    MARK_BETTER: r"$^\dagger$",
    MARK_WORSE: r"$^\ddagger$",
    "<": r"$<$",
    ">": r"$>$",
}


@dataclass
class Cell:
    """One table cell.

    ``state``: ``ok`` (at least one seed finished), ``failed`` (records exist, none finished),
    ``missing`` (no record at all), ``incomplete`` (average column: no seed finished every domain).
    """

    mean: float = math.nan
    std: float = math.nan
    n_done: int = 0
    n_expected: int = 0
    state: str = "missing"
    bold: bool = False
    mark: str = ""
    ci: tuple[float, float] | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok" and math.isfinite(self.mean)

    def value(self, pm: str = "±") -> str:
        """``mean ± std`` with one decimal (just the mean when std is undefined), or the state."""
        if not self.ok:
            return self.state if self.state != "ok" else "n/a"
        if math.isfinite(self.std):
            return f"{self.mean:.1f} {pm} {self.std:.1f}"
        return f"{self.mean:.1f}"

    def suffix(self) -> str:
        """`` (d/n)`` when only ``d`` of the ``n`` expected seeds finished."""
        return f" ({self.n_done}/{self.n_expected})" if self.ok and self.n_done < self.n_expected else ""


def fmt_ci(ci: tuple[float, float] | None) -> str:
    """A bootstrap interval as ``[lo, hi]`` with one decimal, ``n/a`` when undefined."""
    if ci is None or not all(math.isfinite(v) for v in ci):
        return "n/a"
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def fmt_sig(x: float, digits: int = 2) -> str:
    """``x`` to ``digits`` significant digits, ``n/a`` when undefined.

    Positional notation from 1e-4 up (``0.0055``, ``0.00017``, ``0.010``, ``0.50``, ``1.0``, ``8.4``,
    ``20``, ``150``), scientific below (``1.2e-05``); trailing zeros kept, so every printed value
    shows its ``digits`` digits. Python's correctly rounded formatting: a value that is not within
    a few units in the last place of a rounding boundary prints the same on every machine.
    """
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 10**digits:
        return f"{round(x, digits - 1 - math.floor(math.log10(abs(x)))):.0f}"
    return f"{x:#.{digits}g}".rstrip(".")


def fmt_p(p: float) -> str:
    """A p-value (or a test statistic) with two significant digits (:func:`fmt_sig`), ``n/a`` when undefined."""
    return fmt_sig(p, 2)


def fmt_num(x: float, digits: int = 2, sign: bool = False) -> str:
    """A number with fixed decimals (``sign``: with its sign, ``+0.56``), ``n/a`` when undefined. A value
    that rounds to zero prints unsigned (``0.00``), so last-bit noise around zero cannot flip its sign."""
    if x is None or not math.isfinite(x):
        return "n/a"
    text = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return text.lstrip("+-") if float(text) == 0 else text


def mark_best(grid: dict[str, dict[str, Cell]], columns: list[str], higher_is_better: bool) -> None:
    """Set ``bold`` on the cells with the best printed mean of each column."""
    for col in columns:
        cells = [row[col] for row in grid.values() if col in row and row[col].ok]
        if not cells:
            continue
        printed = [round(c.mean, 1) for c in cells]
        best = max(printed) if higher_is_better else min(printed)
        for c, v in zip(cells, printed):
            c.bold = v == best


def markdown_grid(grid: dict[str, dict[str, Cell]], columns: list[str], first: str = "method") -> str:
    """A GitHub Markdown table (tabulate): one row per key of ``grid``, bold best, marks, ``(d/n)``."""
    rows = []
    for name, row in grid.items():
        cells = []
        for col in columns:
            c = row.get(col, Cell())
            text = f"**{c.value()}**" if c.bold else c.value()
            cells.append(text + c.mark + c.suffix())
        rows.append([name, *cells])
    return tabulate(rows, headers=[first, *columns], tablefmt="github", disable_numparse=True)


def markdown_ci_grid(grid: dict[str, dict[str, Cell]], columns: list[str], first: str = "method") -> str:
    """A GitHub Markdown table of the cells' bootstrap intervals."""
    rows = [[name, *[fmt_ci(row.get(col, Cell()).ci) for col in columns]] for name, row in grid.items()]
    return tabulate(rows, headers=[first, *columns], tablefmt="github", disable_numparse=True)


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def latex_grid(
    grid: dict[str, dict[str, Cell]], columns: list[str], caption: str, label: str, first: str = "method"
) -> str:
    """A booktabs ``table`` environment: bold best (``\\textbf``), daggers, ``(d/n)``."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{l{'r' * len(columns)}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in [first, *columns]) + r" \\",
        r"\midrule",
    ]
    for name, row in grid.items():
        cells = [latex_escape(name)]
        for col in columns:
            c = row.get(col, Cell())
            text = c.value(pm=r"$\pm$")
            text = rf"\textbf{{{text}}}" if c.bold else text
            cells.append(text + _LATEX_MARKS.get(c.mark, "") + c.suffix())
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def csv_rows(grid: dict[str, dict[str, Cell]], columns: list[str]) -> list[dict[str, object]]:
    """Long-format rows: one per method x column with mean, std, seed counts, state, best, mark, CI."""
    out = []
    for name, row in grid.items():
        for col in columns:
            c = row.get(col, Cell())
            lo, hi = c.ci if c.ci is not None else (math.nan, math.nan)
            out.append(
                {
                    "method": name,
                    "column": col,
                    "mean": c.mean,
                    "std": c.std,
                    "n_done": c.n_done,
                    "n_expected": c.n_expected,
                    "state": c.state,
                    "best": int(c.bold),
                    "mark": {MARK_BETTER: "better", MARK_WORSE: "worse"}.get(c.mark, ""),
                    "ci_lo": lo,
                    "ci_hi": hi,
                }
            )
    return out
