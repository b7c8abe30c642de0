"""Numbers published in papers, read from ``datasets/<name>/reported.csv``, for comparison with runs.

Each data set folder may hold a ``reported.csv`` (data, not code) with the header
``method,dataset,protocol,setting,domain,backbone,pretrained,metric,value,source``:

- ``method``: a registered method name (the published recipe, so it matches an undecorated label);
- ``domain``: a domain of the data set, or ``avg`` for the paper's average over domains;
- ``backbone`` / ``pretrained``: the open_clip model name and weight tag of the paper's runs
  (e.g. ``ViT-B-16`` / ``openai``); an empty ``pretrained`` matches any tag;
- ``metric``: a key of :data:`benchmark.core.metrics.METRIC_NAMES`, in percent, on the test set;
- ``source``: where the number is printed: URL plus table (and row/column where useful).

Only numbers read in their source belong here. A published number is shown next to a measured
cell only when data set, protocol, setting, backbone (and pretrained tag, when given), method,
domain and metric all match.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.core.metrics import METRIC_NAMES
from benchmark.core.paths import DATASETS_DIR

REPORTED_COLUMNS = (
    "method",
    "dataset",
    "protocol",
    "setting",
    "domain",
    "backbone",
    "pretrained",
    "metric",
    "value",
    "source",
)


def reported_files(root: Path = DATASETS_DIR) -> list[Path]:
    """Every ``<root>/<data set>/reported.csv``, sorted by path."""
    return sorted(Path(root).glob("*/reported.csv"))


def load_reported(paths: list[Path]) -> pd.DataFrame:
    """The rows of the given files, validated; a bad file raises a ValueError naming it and the problem."""
    frames = []
    for path in paths:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in REPORTED_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(
                f"{path}: missing columns {', '.join(missing)}; expected header {','.join(REPORTED_COLUMNS)}"
            )
        bad_metric = sorted(set(df.metric) - set(METRIC_NAMES))
        if bad_metric:
            raise ValueError(f"{path}: unknown metric(s) {', '.join(bad_metric)}; valid: {', '.join(METRIC_NAMES)}")
        values = pd.to_numeric(df.value, errors="coerce")
        if values.isna().any():
            raise ValueError(f"{path}: non-numeric value in row(s) {', '.join(map(str, df.index[values.isna()] + 2))}")
        if (df.source.str.strip() == "").any():
            raise ValueError(f"{path}: every published number needs its source")
        frames.append(df.assign(value=values)[list(REPORTED_COLUMNS)])
    if not frames:
        return pd.DataFrame(columns=list(REPORTED_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def match_reported(
    reported: pd.DataFrame, protocol: str, dataset: str, setting: str, model: str, pretrained: str
) -> pd.DataFrame:
    """The published rows that apply to runs of this protocol, data set, setting and backbone."""
    if reported.empty:
        return reported
    keep = (
        (reported.protocol == protocol)
        & (reported.dataset == dataset)
        & (reported.setting == setting)
        & (reported.backbone == model)
        & ((reported.pretrained == "") | (reported.pretrained == pretrained))
    )
    return reported[keep].sort_values(["method", "metric", "domain"], kind="mergesort")
