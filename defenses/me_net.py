"""ME-Net (Yang et al., "ME-Net: Towards Effective Adversarial Robustness with Matrix Estimation", ICML 2019)."""

from __future__ import annotations

import torch

from robench.masks import MaskedDefense

_METHODS = ("usvt", "softimpute")
_CHANNELS = ("concat", "separate")


class MENet(MaskedDefense):
    """Observe each pixel with probability ``p``, then re-estimate the image by matrix estimation.

    Recipe of ``YyzHarry/ME-Net`` (``attack_whitebox.py``, the ``usvt`` / ``softimp`` layers):
    map the image to [-1, 1]; with ``channels="concat"`` (default) the C channels are put side by
    side into one ``H x CW`` matrix and one Bernoulli(p) mask covers it; with ``"separate"`` one
    ``H x W`` mask is shared by the channels, each channel its own matrix. Unobserved entries are 0.

    * ``method="usvt"`` (default; Chatterjee 2015): SVD of the masked matrix, keep the top
      ``int(svd_prob * H)`` singular values (25 of 32 at 0.8; at most ``min(H, CW)``, the repo
      assumes square images), reconstruct, divide by the
      *observed fraction of this mask* (the empirical count / size, not ``p``).
    * ``method="softimpute"`` (Mazumder et al. 2010, fancyimpute's ``SoftImpute()`` defaults):
      zero fill, shrink the singular values by 1/50 of the largest singular value of the filled
      matrix, at most 100 iterations, stop when the missing entries move by less than 0.1 % in
      relative norm; observed entries are kept exactly. ``svd_prob`` is unused.

    Then clip to [-1, 1], map back to [0, 1] and split the channels. The nuclear-norm method of
    the repo (a cvxpy/SCS solve per image) is not provided.

    Masks (:class:`~robench.masks.MaskedDefense`) are boolean observation masks in image layout:
    ``(B, C, H, W)`` for ``concat`` (entry ``[b, c, i, j]`` is matrix entry ``[i, c*W + j]``),
    ``(B, 1, H, W)`` for ``separate``. Everything runs batched on the images' device (one
    ``torch.linalg.svd`` over the batch). Not differentiable: attacks see the identity (BPDA), as
    in the repo's identity backward, with EOT over the masks.

    Args:
        p: observation probability of each matrix entry, in (0, 1] (0.5, the repo's ``maskp``).
        svd_prob: fraction of ``H`` giving the number of singular values USVT keeps, in (0, 1] (0.8).
        channels: ``"concat"`` or ``"separate"``.
        method: ``"usvt"`` or ``"softimpute"``.
    """

    differentiable = False
    version = "1"

    def __init__(self, *, p: float = 0.5, svd_prob: float = 0.8, channels: str = "concat", method: str = "usvt"):
        super().__init__()
        if not 0 < p <= 1:
            raise ValueError(f"p must be in (0, 1], got {p!r}")
        if not 0 < svd_prob <= 1:
            raise ValueError(f"svd_prob must be in (0, 1], got {svd_prob!r}")
        if channels not in _CHANNELS:
            raise ValueError(f"channels must be one of {_CHANNELS}, got {channels!r}")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r} (nuclear-norm is not implemented)")
        self.p = float(p)
        self.svd_prob = float(svd_prob)
        self.channels = channels
        self.method = method

    def _mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        B, C, H, W = x.shape
        return (B, C, H, W) if self.channels == "concat" else (B, 1, H, W)

    def sample_masks(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Boolean observation masks, each entry true with probability ``p``: ``(B, C, H, W)`` or ``(B, 1, H, W)``."""
        device = generator.device if generator is not None else x.device
        u = torch.rand(self._mask_shape(x), generator=generator, device=device)
        return (u < self.p).to(x.device)

    def purify_with_masks(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Re-estimate ``x`` ``(B, C, H, W)`` in [0, 1] from the entries where ``masks`` is true."""
        expected = self._mask_shape(x)
        if tuple(masks.shape) != expected:
            raise ValueError(
                f"ME-Net ({self.channels}) needs observation masks shaped {expected}, got {tuple(masks.shape)}"
            )
        B, C, H, W = x.shape
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        img = x.detach().to(dtype) * 2 - 1
        obs = masks.to(x.device) != 0
        if self.channels == "concat":
            # (B, C, H, W) -> (B, H, C*W): channel c occupies columns c*W .. (c+1)*W - 1.
            A = img.permute(0, 2, 1, 3).reshape(B, H, C * W)
            M = obs.permute(0, 2, 1, 3).reshape(B, H, C * W)
        else:
            A = img.reshape(B * C, H, W)
            M = obs.expand(B, C, H, W).reshape(B * C, H, W)
        if self.method == "usvt":
            est = usvt(A, M, rank=int(self.svd_prob * H))
        else:
            est = soft_impute(A, M)
        est = est.clamp(-1, 1)
        if self.channels == "concat":
            est = est.reshape(B, H, C, W).permute(0, 2, 1, 3)
        else:
            est = est.reshape(B, C, H, W)
        return ((est + 1) / 2).clamp(0, 1).to(x.dtype).contiguous()


def usvt(A: torch.Tensor, mask: torch.Tensor, *, rank: int) -> torch.Tensor:
    """USVT estimate of a batch of matrices ``A`` ``(N, m, n)`` from the entries where ``mask``.

    Keeps the ``rank`` largest singular values of ``A * mask`` and divides by the observed
    fraction of each mask (ME-Net's ``usvt``).
    """
    observed = mask.to(A.dtype)
    p_obs = observed.mean(dim=(-2, -1), keepdim=True).clamp_min(1 / observed[0].numel())
    U, S, Vh = torch.linalg.svd(A * observed, full_matrices=False)
    k = max(0, min(rank, S.shape[-1]))
    return (U[..., :k] * S[..., None, :k]) @ Vh[..., :k, :] / p_obs


def soft_impute(
    A: torch.Tensor, mask: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-3, shrink_ratio: float = 1 / 50
) -> torch.Tensor:
    """Soft-Impute completion of a batch of matrices ``A`` ``(N, m, n)`` (fancyimpute ``SoftImpute()`` defaults).

    Zero fill, then repeatedly replace the missing entries by the SVD reconstruction with singular
    values shrunk by ``shrink_ratio`` times the largest singular value of the zero-filled matrix;
    a matrix stops once ``||new - old|| / ||old|| < tol`` on its missing entries.
    """
    missing = mask == 0
    filled = torch.where(missing, torch.zeros_like(A), A)
    shrink = torch.linalg.matrix_norm(filled, ord=2)[:, None] * shrink_ratio
    live = missing.flatten(1).any(dim=1)
    tiny = torch.finfo(torch.float32).eps
    for _ in range(max_iter):
        if not bool(live.any()):
            break
        U, S, Vh = torch.linalg.svd(filled, full_matrices=False)
        rec = (U * (S - shrink).clamp_min(0)[:, None, :]) @ Vh
        old = torch.where(missing, filled, 0).flatten(1)
        delta = (torch.where(missing, rec, 0).flatten(1) - old).norm(dim=1)
        old_norm = old.norm(dim=1)
        converged = (old_norm > 0) & ~((old_norm < tiny) & (delta > tiny)) & (delta < tol * old_norm)
        filled = torch.where(missing & live[:, None, None], rec, filled)
        live = live & ~converged
    return filled
