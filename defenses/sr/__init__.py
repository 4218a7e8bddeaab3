"""SR (Mustafa et al., "Image Super-Resolution as a Defense Against Adversarial Attacks"): wavelet denoising + EDSR x2."""

from robench.defenses.sr.defense import SR

__all__ = ["SR"]
