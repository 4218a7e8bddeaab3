"""DIR (Zhou et al., ICML 2023) tables as benchmark grids, with the paper's printed numbers in ``paper/``."""
