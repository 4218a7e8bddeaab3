"""Gaussian noise layer: the dynamic (randomised) mode of RDP ("Adversarial Purification through Representation Disentanglement", Bai et al.)."""

from __future__ import annotations

import torch

from robench.defense import Defense


class GaussianNoise(Defense):
    """Add ``N(0, sigma^2)`` noise to every pixel at inference, then clip to [0, 1].

    This is the Gaussian-noise layer that the *dynamic* RDP puts in front of its purifier
    (``x <- x + N(0, 0.05^2)``, sigma in [0, 1] pixel units); alone it is a randomised-smoothing
    style baseline, and ``compose`` puts it in front of any other defense.

    Choices:

    * The clip to [0, 1] is robench's (RDP does not state it; the image contract needs it).
    * ``project_eps``: NRP's dynamic mode also projects the noisy image back into the Linf ball
      of radius ``project_eps`` (16/255 in NRP) around the input before clipping
      (``Muzammal-Naseer/NRP: purify.py``). RDP does not mention it, so it is off by default.
    * Noise comes from torch's global generator on the input's device, which the runner seeds
      per batch; there is no ``seed`` argument.

    ``stochastic = True`` (EOT applies) and ``differentiable = True``: the output is ``x`` plus an
    input-independent draw, clipped, so the gradient is the identity on unclipped pixels.

    Args:
        sigma: standard deviation of the noise in [0, 1] pixel units, in (0, 1] (0.05 in RDP).
        project_eps: radius of the optional Linf projection around the input, in (0, 1], or
            ``None`` (default) for no projection.
    """

    stochastic = True

    def __init__(self, *, sigma: float = 0.05, project_eps: float | None = None):
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma <= 1:
            raise ValueError(f"sigma must be a number in (0, 1] (pixel units, e.g. 0.05), got {sigma!r}")
        if project_eps is not None and (
            isinstance(project_eps, bool) or not isinstance(project_eps, (int, float)) or not 0 < project_eps <= 1
        ):
            raise ValueError(f"project_eps must be None or a number in (0, 1] (e.g. 16/255), got {project_eps!r}")
        self.sigma = float(sigma)
        self.project_eps = None if project_eps is None else float(project_eps)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x + self.sigma * torch.randn_like(x)
        if self.project_eps is not None:
            noisy = torch.minimum(torch.maximum(noisy, x - self.project_eps), x + self.project_eps)
        return noisy.clamp(0, 1)

