"""RDP (Bai et al., "Adversarial Purification through Representation Disentanglement") tables as benchmark grids, with the paper's printed numbers in ``paper/``."""
