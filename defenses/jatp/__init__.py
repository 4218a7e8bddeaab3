"""JATP (Zhou et al., "Improving White-box Robustness of Pre-processing Defenses via Joint Adversarial Training",
2021), reconstructed from its abstract on HGD's DUNET: the pre-processor."""

from robench.defenses.jatp.defense import JATP

__all__ = ["JATP"]
