"""APE-GAN (Jin et al., "APE-GAN: Adversarial Perturbation Elimination with GAN", ICASSP 2019): the purifier."""

from robench.defenses.ape_gan.defense import APEGAN

__all__ = ["APEGAN"]
