"""NRP (Naseer et al., "A Self-supervised Approach for Adversarial Robustness", CVPR 2020): the purifier."""

from robench.defenses.nrp.defense import NRP

__all__ = ["NRP"]
