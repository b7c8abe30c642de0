"""Figure style and layout: fonts, colours and markers, text measured and wrapped, titles and
legends placed outside the data, deterministic saving. What every figure of ``plots`` shares."""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.textpath import TextToPath  # noqa: E402

from benchmark.core.records import atomic_write  # noqa: E402
from benchmark.report.tables import fmt_num, fmt_p  # noqa: E402

DPI = 110
_PNG_META = {"Software": None}
_PDF_META = {"Creator": None, "Producer": None, "CreationDate": None}

FONT = 8
"""Font size (points) of labels and titles; :data:`SMALL` for ticks, legends and cell values."""
SMALL = 7
TITLE = 9
LINE = 1.3
"""Line height as a multiple of the font size (matplotlib's 1.2 plus a margin)."""
LABEL_WIDTH = 2.6
"""Width (inches) at which a method's label wraps."""
PAD = 0.12
"""Margin (inches) added around measured text."""
RC = {
    "font.size": FONT,
    "axes.titlesize": FONT,
    "axes.labelsize": FONT,
    "xtick.labelsize": SMALL,
    "ytick.labelsize": SMALL,
    "legend.fontsize": SMALL,
    "figure.titlesize": TITLE,
    "text.parse_math": False,
    "axes.titlelocation": "center",
    "legend.handlelength": 1.6,
}

REGIME_STYLE = {
    "none": ("o", "#555555"),
    "transductive": ("s", "#0072B2"),
    "online": ("^", "#D55E00"),
    "episodic": ("D", "#009E73"),
    "?": ("X", "#CC79A7"),
}
"""Marker and colour (Okabe-Ito, colour-blind safe) of each regime."""
MARKERS = "os^Dv<>pPX*h"
_T2P = TextToPath()


def _styled(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build a figure under :data:`RC` (text is never parsed as math: labels may hold ``$`` or ``_``)."""

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with plt.rc_context(RC):
            return build(*args, **kwargs)

    return wrapper


def text_width(text: str, size: float = FONT) -> float:
    """Width (inches) of ``text`` (its longest line) in the default font at ``size`` points, with 6% to
    spare for the hinting of small sizes at low resolutions."""
    prop = FontProperties(size=size)
    lines = str(text).split("\n")
    return 1.06 * max(_T2P.get_text_width_height_descent(line or " ", prop, ismath=False)[0] for line in lines) / 72.0


def text_height(text: str, size: float = FONT) -> float:
    """Height (inches) of ``text``'s lines at ``size`` points."""
    return (str(text).count("\n") + 1) * size * LINE / 72.0


def _pieces(word: str, width: float, size: float) -> list[str]:
    """A word wider than ``width`` cut after ``_ = , / . -`` (and, if a piece is still too wide, anywhere)."""
    if text_width(word, size) <= width:
        return [word]
    out = []
    for part in re.findall(r"[^_=,/.\-]*[_=,/.\-]?", word):
        while part and text_width(part, size) > width:
            n = max(1, int(len(part) * width / text_width(part, size)) - 1)
            out.append(part[:n])
            part = part[n:]
        if part:
            out.append(part)
    return out


def wrap(text: str, width: float, size: float = FONT) -> str:
    """``text`` wrapped greedily to lines of at most ``width`` inches at ``size`` points."""
    lines = []
    for para in str(text).split("\n"):
        line = ""
        for word in re.findall(r"\S+\s*", para):
            pieces = _pieces(word.rstrip(), width, size)
            pieces[-1] += word[len(word.rstrip()) :]
            for piece in pieces:
                if line and text_width((line + piece).rstrip(), size) > width:
                    lines.append(line.rstrip())
                    line = piece.lstrip()
                else:
                    line += piece
        lines.append(line.rstrip())
    return "\n".join(lines)


def wrap_label(label: str, width: float = LABEL_WIDTH, size: float = FONT) -> str:
    """A method's row label wrapped to ``width`` inches: the name, then its departures ``(k=v, ...)``."""
    if text_width(label, size) <= width:
        return label
    name, sep, rest = str(label).partition(" (")
    if sep:
        return wrap(name, width, size) + "\n" + wrap("(" + rest, width, size)
    return wrap(label, width, size)


def colours(methods: list[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per method (tab10, cycled), in the given order."""
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def method_styles(methods: list[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """A distinct (colour, marker) per method: ten colours with the first marker, the next ten with the
    second, ... (120 methods before a pair repeats)."""
    cols = colours(methods)
    return {m: (cols[m], MARKERS[(i // 10) % len(MARKERS)]) for i, m in enumerate(methods)}


def regime_style(regime: Any) -> tuple[str, str]:
    return REGIME_STYLE.get(str(regime), REGIME_STYLE["?"])


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically, close the figure, return both paths.

    The layout is computed once, at the PNG's resolution, and kept for both files."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.set_dpi(DPI)
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
        fig.set_layout_engine("none")
    for path, kwargs in ((png, {"dpi": DPI, "metadata": _PNG_META}), (pdf, {"metadata": _PDF_META})):
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix[1:], **kwargs)
        atomic_write(path, buf.getvalue())
    plt.close(fig)
    return [png, pdf]


# --- layout helpers -------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = plt.figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.06, h_pad=0.06, wspace=0.04, hspace=0.04)
    return fig


def _title(fig: Figure, title: str, width: float) -> float:
    """Set the figure's title wrapped to its width; returns the height it takes (inches)."""
    text = wrap(title, width - 2 * PAD, TITLE)
    fig.suptitle(text, fontsize=TITLE)
    return text_height(text, TITLE) + PAD


def _title_height(title: str, width: float) -> float:
    return text_height(wrap(title, width - 2 * PAD, TITLE), TITLE) + PAD


def _legend_layout(labels: list[str], width: float) -> tuple[int, float]:
    """Columns and height (inches) of a legend below the axes holding ``labels`` in a figure ``width`` wide."""
    if not labels:
        return 1, 0.0
    entry = max(text_width(lab, SMALL) for lab in labels) + 0.55
    ncols = max(1, min(len(labels), int((width - 2 * PAD) // entry)))
    rows = math.ceil(len(labels) / ncols)
    lines = max(lab.count("\n") + 1 for lab in labels)
    return ncols, rows * (lines * SMALL * LINE / 72.0 + 0.06) + 2 * PAD


def _legend(fig: Figure, handles: list[Any], labels: list[str], ncols: int) -> None:
    """A legend in its own area below every axes."""
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False, fontsize=SMALL)


def _row_height(labels: list[str], minimum: float = 0.24) -> float:
    return max(minimum, max((text_height(lab, FONT) for lab in labels), default=0.0) + 0.08)


# --- the headline: difference to the baseline ------------------------------------------------------------------


def _difference_text(r: Any) -> str:
    if r.n == 0:
        return "no common (domain, seed) pair"
    if math.isfinite(r.ci_lo) and math.isfinite(r.ci_hi):
        ci = f"[{fmt_num(r.ci_lo, 2, sign=True)}, {fmt_num(r.ci_hi, 2, sign=True)}]"
    else:
        ci = "(no interval: 1 pair)"
    return f"{fmt_num(r.mean, 2, sign=True)} {ci}   p = {fmt_p(r.p_holm)}{r.mark}"


def header_text() -> str:
    """The heading of the difference figure's right-hand column."""
    return "mean [95% interval]   Holm-adjusted Wilcoxon p"
