"""The SR defense's first step: scikit-image's wavelet denoising as Mustafa et al.'s ``Wavelet_Denoising.py`` runs it.

``denoise_wavelet(image, sigma=0.04, method="BayesShrink", mode="soft", convert2ycbcr=True)`` on each
RGB image, on CPU numpy, one image per thread (PyWavelets' transforms run outside the GIL for
most of their time). ``sigma_mode`` chooses which scikit-image it reproduces:

* ``"released"``: scikit-image 0.14, which the authors ran (2018). It applied ``sigma`` unchanged
  to each YCbCr channel after rescaling the channel to [0, 1] and clipped the result to [0, 1].
  Current scikit-image divides each channel's sigma by that channel's range, so the released
  behaviour is the same call with ``sigma * range`` per channel and ``rescale_sigma=False``.
* ``"rescaled"``: the current default, ``rescale_sigma=True``: ``sigma`` is taken in RGB units
  and converted to each channel's units; on CIFAR-10 test images that is about 0.03 instead of
  0.04 on Y and 0.13 instead of 0.04 on Cb and Cr (whose ranges are small).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SIGMA_MODES = ("released", "rescaled")
ARGUMENTS = {"method": "BayesShrink", "mode": "soft", "convert2ycbcr": True, "channel_axis": -1}  # specs A8


def denoise_image(image: np.ndarray, sigma: float, sigma_mode: str) -> np.ndarray:
    """One ``(H, W, 3)`` float image in [0, 1], wavelet-denoised (specs A8), clipped to [0, 1]."""
    from skimage.color import rgb2ycbcr
    from skimage.restoration import denoise_wavelet

    if sigma_mode == "released":
        ycbcr = rgb2ycbcr(image)
        ranges = ycbcr.max(axis=(0, 1)) - ycbcr.min(axis=(0, 1))
        out = denoise_wavelet(image, sigma=[sigma * float(r) for r in ranges], rescale_sigma=False, **ARGUMENTS)
    else:
        out = denoise_wavelet(image, sigma=sigma, rescale_sigma=True, **ARGUMENTS)
    return np.clip(out, 0.0, 1.0)


def denoise_batch(images: np.ndarray, sigma: float, sigma_mode: str) -> np.ndarray:
    """A ``(B, H, W, 3)`` batch, each image denoised by :func:`denoise_image` in a thread pool."""
    workers = max(1, min(len(images), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.stack(list(pool.map(lambda image: denoise_image(image, sigma, sigma_mode), images)))
