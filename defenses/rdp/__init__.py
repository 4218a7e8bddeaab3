"""RDP (Bai et al., "Adversarial Purification through Representation Disentanglement"): the purifier P."""

from robench.defenses.rdp.defense import RDP

__all__ = ["RDP"]
