"""Old import path of the ``Adapter`` base class (``benchmark.adapt.adapter``), kept so that method
files written against the README before the package was grouped by layer keep working.
New code imports ``from benchmark import Adapter, register_method``."""

import warnings

from benchmark.adapt.adapter import *  # noqa: F401,F403
from benchmark.adapt.adapter import Adapter, HyperParameterError, NonFiniteLoss  # noqa: F401

warnings.warn(
    "benchmark.adapter moved to benchmark.adapt.adapter; import `from benchmark import Adapter`",
    DeprecationWarning,
    stacklevel=2,
)
