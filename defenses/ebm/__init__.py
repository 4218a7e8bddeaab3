"""EBM purification (Hill et al., "Stochastic Security", ICLR 2021): the convergent EBM and its Langevin purifier."""

from robench.defenses.ebm.defense import EBMPurification

__all__ = ["EBMPurification"]
