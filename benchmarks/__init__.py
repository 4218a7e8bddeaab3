"""Named benchmark grids as data files, registered under ``robench.benchmarks``."""
