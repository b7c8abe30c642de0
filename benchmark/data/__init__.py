"""Data sets: specs read from ``datasets/<name>/dataset.yaml`` and the loading of splits.

Public API::

    dataset_names() -> list[str]
    get_spec(name) -> DatasetSpec          # unknown name: KeyError listing the valid names
    load_split(name, domain, setting, protocol=None, data_root=None, resolution=224, threads=None, cache=None) -> Split
    DataError                              # missing/unreadable data, with an actionable message

Importing the package registers every data set in ``benchmark.registry.DATASETS``.
"""
from benchmark.data.cache import CACHE_ENV
from benchmark.data.catalog import DATASETS_DIR, dataset_names, get_spec, register_datasets
from benchmark.data.errors import DataError, UnknownNameError
from benchmark.data.locate import DATA_ROOT_ENV
from benchmark.data.spec import DatasetSpec, Domain, Layout, Protocol
from benchmark.data.split import Split, SplitPart, load_split

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
