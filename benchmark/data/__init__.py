"""Data sets: specs read from ``datasets/<name>/dataset.yaml`` and the loading of splits.

Public API::

    dataset_names() -> list[str]
    get_spec(name) -> DatasetSpec          # unknown name: KeyError listing the valid names
    load_split(name, domain, setting, protocol=None, data_root=None, resolution=224, threads=None, cache=None) -> Split
                                           # cache None: $CLIPBENCH_CACHE, else <data_root>/.clipbench_cache
    DataError                              # missing/unreadable data, with an actionable message

Getting and checking data (``python -m benchmark.data download|prepare|verify|cache``) lives in
``fetch`` (download), ``install`` (prepare: archives into the layout), ``verify`` and ``cache``;
below them ``transfer`` (resumable HTTP), ``archives`` (safe extraction), ``sources`` (sizes and
checksums against the spec) and ``manifest`` (what was installed).

Importing the package registers every data set in ``benchmark.registry.DATASETS``.
"""

import functools

from benchmark.core.paths import DATASETS_DIR
from benchmark.data.cache import CACHE_ENV
from benchmark.data.catalog import dataset_names, get_spec
from benchmark.data.errors import DataError, UnknownNameError
from benchmark.data.locate import DATA_ROOT_ENV
from benchmark.data.spec import DatasetSpec, Domain, Layout, Protocol
from benchmark.data.split import Split, SplitPart, load_split
from benchmark.registry import DATASETS


def register_datasets() -> None:
    """Register one loader per data set in ``benchmark.registry.DATASETS`` (idempotent)."""
    for name in dataset_names():
        DATASETS.register_module(name=name, module=functools.partial(load_split, name), force=True)


register_datasets()

__all__ = [
    "CACHE_ENV",
    "DATASETS_DIR",
    "DATA_ROOT_ENV",
    "DataError",
    "DatasetSpec",
    "Domain",
    "Layout",
    "Protocol",
    "Split",
    "SplitPart",
    "UnknownNameError",
    "dataset_names",
    "get_spec",
    "load_split",
]
