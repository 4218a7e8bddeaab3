"""The ``sr`` defense: wavelet denoising, then EDSR x2 super-resolution (Mustafa et al., TIP 2019; specs A8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.checkpoint import load_weights
from robench.defense import Defense, DefenseInputError, seeded_init
from robench.defenses.jpeg import JPEG
from robench.defenses.sr.edsr import EDSR, RGB_RANGE
from robench.defenses.sr.wavelet import SIGMA_MODES, denoise_batch
from robench.hyper import check_positive, check_positive_int
from robench.models.weights import state_dict_from


class SR(Defense):
    """Image super-resolution defense (Mustafa et al., "Image Super-Resolution as a Defense Against
    Adversarial Attacks", IEEE TIP 2019): wavelet denoising, EDSR x2 super-resolution, and a resize
    back to the input's size.

    1. scikit-image's ``denoise_wavelet`` (BayesShrink, soft thresholding, sigma 0.04, YCbCr), per
       image on CPU numpy (:mod:`.wavelet`; about 1.5 ms per 32x32 image and 11 ms per 299x299
       image with 2 CPU cores).
    2. EDSR x2 (:class:`~.edsr.EDSR`, EDSR-PyTorch's layout, pixels in [0, 255]); the authors run
       EDSR-PyTorch's ``--pre_train download`` x2 model with its default size, EDSR baseline
       (16 blocks, 64 features, 1.37 M parameters; their ``experiment/test/config.txt``), which is
       the default here. ``n_resblocks=32, n_feats=256, res_scale=0.1`` is the paper's EDSR (40.7 M).
    3. The 2x image, clamped to [0, 1], resized back to the input's size (bilinear, antialiased).

    The wavelet step is not differentiable: attacks see the identity for it (BPDA, specs D11) and
    the true gradient of EDSR and the resize at the denoised image (:meth:`surrogate`, whose value
    is the defense's). Deterministic.

    Where robench differs from the authors' scripts (specs A8):

    * the resize back (step 3) is robench's: the authors feed the 598x598 image to Inception-v3;
      a classifier of fixed input size needs the input's size back;
    * the denoised image stays a float image; the authors save it as a JPEG (matplotlib's
      ``imsave``) before EDSR: ``jpeg_quality=Q`` re-encodes it with PIL at quality Q (as the
      ``jpeg`` defense) to restore that step (the quality they used is not stated);
    * the super-resolved image is not rounded to 8 bits (the authors save it as a PNG).

    Untrained unless ``weights`` is given: EDSR-PyTorch's released x2 files (``edsr_baseline_x2-*.pt``,
    ``edsr_x2-*.pt``; keys load unchanged) or a checkpoint of ``robench train sr``.

    Args:
        weights: path of a state dict (loaded with ``weights_only=True``, its sha256 in the cell key).
        n_resblocks: EDSR's residual blocks (16).
        n_feats: EDSR's feature channels (64).
        res_scale: EDSR's residual scaling (1.0; the paper's EDSR uses 0.1).
        sigma: noise level given to ``denoise_wavelet`` (0.04, the authors').
        sigma_mode: ``"released"`` (the authors' scikit-image 0.14 use of sigma) or ``"rescaled"``
            (current scikit-image's ``rescale_sigma=True``); see :mod:`.wavelet`.
        jpeg_quality: None, or re-encode the denoised image as JPEG at this quality (1-95).
        init_seed: seed of EDSR's random initialisation (0).
    """

    stochastic = False
    differentiable = False
    needs_training = True
    version = "1"
    # ``robench train sr`` runs this trainer: EDSR x2 with the L1 loss on bicubic pairs (specs A8, EDSR).
    trainer = "robench.defenses.sr.trainer:SRTraining"

    def __init__(self, *, weights: "str | None" = None, n_resblocks: int = 16, n_feats: int = 64,
                 res_scale: float = 1.0, sigma: float = 0.04, sigma_mode: str = "released",
                 jpeg_quality: "int | None" = None, init_seed: int = 0):
        super().__init__()
        check_positive_int("SR's n_resblocks", n_resblocks)
        check_positive_int("SR's n_feats", n_feats)
        check_positive("SR's res_scale", res_scale)
        check_positive("SR's sigma", sigma)
        if sigma_mode not in SIGMA_MODES:
            raise ValueError(f"SR's sigma_mode must be one of {', '.join(map(repr, SIGMA_MODES))}, got {sigma_mode!r}")
        self.jpeg = None if jpeg_quality is None else JPEG(quality=jpeg_quality)  # checks the quality
        self.n_resblocks, self.n_feats, self.res_scale = n_resblocks, n_feats, res_scale
        self.sigma, self.sigma_mode, self.jpeg_quality, self.init_seed = sigma, sigma_mode, jpeg_quality, init_seed
        with seeded_init("SR", init_seed):
            self.edsr = EDSR(n_resblocks=n_resblocks, n_feats=n_feats, res_scale=float(res_scale))
        self.weights = None if weights is None else str(weights)
        self._checkpoints = {} if weights is None else load_weights(self, weights, _state_dict)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.upscale(self.denoise(x))

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The defense's value; its gradient is EDSR's and the resize's at the denoised image (identity for the wavelet step)."""
        denoised = self.denoise(x)
        return self.upscale(x + (denoised - x).detach())

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """Step 1: the wavelet-denoised batch (then JPEG-coded with ``jpeg_quality``), off the autograd graph."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise DefenseInputError(f"SR needs RGB images (B, 3, H, W); got shape {tuple(x.shape)}")
        pixels = x.detach().permute(0, 2, 3, 1).to("cpu", torch.float64).numpy()
        denoised = torch.from_numpy(denoise_batch(pixels, self.sigma, self.sigma_mode))
        out = denoised.permute(0, 3, 1, 2).to(x.device, x.dtype).contiguous()
        return out if self.jpeg is None else self.jpeg.purify(out)

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 2-3, differentiable: EDSR x2 in [0, 255], clamped to [0, 1], resized back to ``x``'s size."""
        dtype = self.edsr.head[0].weight.dtype
        super_resolved = (self.edsr(x.to(dtype) * RGB_RANGE) / RGB_RANGE).clamp(0, 1)
        resized = F.interpolate(super_resolved, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        return resized.clamp(0, 1).to(x.dtype)


def _state_dict(obj, source: str) -> dict:
    """The defense's state dict in a checkpoint: EDSR-PyTorch's files hold the bare network."""
    state = state_dict_from(obj, source)
    if any(key.startswith("edsr.") for key in state):
        return state
    return {f"edsr.{key}": value for key, value in state.items()}
