"""Leaves every layer may import: paths, record files, metrics. Standard library and numpy only."""
