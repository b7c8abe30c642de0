"""Old import path of the shared losses (``benchmark.adapt.losses``), kept so that method files
written against the README before the package was grouped by layer keep working."""

import warnings

from benchmark.adapt.losses import *  # noqa: F401,F403

warnings.warn("benchmark.losses moved to benchmark.adapt.losses", DeprecationWarning, stacklevel=2)
