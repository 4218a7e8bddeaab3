"""HGD (Liao et al., "Defense against Adversarial Attacks Using High-Level Representation Guided Denoiser", CVPR 2018)."""

from robench.defenses.hgd.defense import HGD
from robench.defenses.hgd.networks import DUNET

__all__ = ["DUNET", "HGD"]
