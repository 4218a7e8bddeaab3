"""RDP's training losses (Bai et al., Eq. 2-9; specs A2).

The paper writes every term as an L1 norm averaged over the batch; robench reads that as the
mean absolute difference over all elements (``F.l1_loss``), which keeps the paper's weights
independent of the image size. The relativistic terms pair each image with its own purified
version, as Eq. 5 is written (no batch mean over the other term).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses.rdp.networks import PurifierNet, ReconstructionNet
from robench.train.gan import Discriminator, generator_loss


@dataclass(frozen=True)
class Weights:
    """Loss weights: alpha1 (pixel), alpha2 (latent), alpha3 (adversarial) of Eq. 6, beta of Eq. 9."""

    pixel: float = 1e-2
    latent: float = 1e-1
    adversarial: float = 1e-4
    reconstruction_pixel: float = 1e-4


def purifier_loss(features: nn.Module, discriminator: Discriminator, purifier: PurifierNet, x: torch.Tensor,
                  x_adv: torch.Tensor, weights: Weights = Weights()
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """L_P of Eq. 6 and its terms (Eq. 2-5), with P(x') and P_enc(x') for the other two updates."""
    latent_adv = purifier.encode(x_adv)
    purified = purifier.decoder(latent_adv)
    with torch.no_grad():
        clean_features = features(x)
        latent_clean = purifier.encode(x)
    terms = {
        "feature": F.l1_loss(features(purified), clean_features),
        "pixel": F.l1_loss(purified, x),
        "latent": F.l1_loss(latent_adv, latent_clean),
        "adversarial": generator_loss(discriminator, x, purified),
    }
    terms["total"] = (terms["feature"] + weights.pixel * terms["pixel"] + weights.latent * terms["latent"]
                      + weights.adversarial * terms["adversarial"])
    return terms, purified, latent_adv


def reconstruction_loss(features: nn.Module, reconstruction: ReconstructionNet, x_adv: torch.Tensor,
                        purifier_latent: torch.Tensor, weights: Weights = Weights()) -> dict[str, torch.Tensor]:
    """L_R of Eq. 9 and its terms (Eq. 7-8); P's latent enters detached, so L_R trains R only (Alg. 1)."""
    rebuilt = reconstruction(x_adv, purifier_latent.detach())
    with torch.no_grad():
        adv_features = features(x_adv)
    terms = {"feature": F.l1_loss(features(rebuilt), adv_features), "pixel": F.l1_loss(rebuilt, x_adv)}
    terms["total"] = terms["feature"] + weights.reconstruction_pixel * terms["pixel"]
    return terms

