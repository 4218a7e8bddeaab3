"""JPEG compression (Guo et al., "Countering Adversarial Images using Input Transformations", ICLR 2018)."""

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from robench.defense import Defense


class JPEG(Defense):
    """Encode and decode each image with the PIL JPEG codec at ``quality`` (75 in Guo et al.).

    The real codec runs on CPU, off the autograd graph, one thread per core (PIL releases the
    GIL while coding). It is not differentiable, so attacks see the gradient of a surrogate
    (BPDA), chosen by ``surrogate``:

    * ``"identity"`` (default): the usual BPDA identity (Athalye et al. 2018).
    * ``"differentiable"``: kornia's differentiable JPEG (``kornia.enhance.jpeg_codec_differentiable``,
      Reich et al. 2024) at the same quality: standard tables, YCbCr with 4:2:0 chroma
      subsampling like PIL's default, rounding replaced by a smooth approximation. Its values
      are close to, not equal to, PIL's; only its gradient is used. Needs ``kornia``; a
      one-channel image is coded as grey RGB and averaged back.

    Args:
        quality: JPEG quality, an integer in [1, 95].
        surrogate: ``"identity"`` or ``"differentiable"``, the BPDA surrogate attacks differentiate.
    """

    differentiable = False
    SURROGATES = ("identity", "differentiable")

    def __init__(self, *, quality: int = 75, surrogate: str = "identity"):
        super().__init__()
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
            raise ValueError(f"quality must be an integer in [1, 95], got {quality!r}")
        if surrogate not in self.SURROGATES:
            raise ValueError(f"surrogate must be one of {', '.join(map(repr, self.SURROGATES))}, got {surrogate!r}")
        if surrogate == "differentiable":
            _kornia_jpeg()  # fail at construction, not in the middle of an attack
        self.quality = quality
        self.surrogate_kind = surrogate

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] not in (1, 3):
            raise ValueError(f"JPEG needs 1 or 3 channels, got {x.shape[1]}")
        pixels = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        workers = min(len(pixels), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            decoded = list(pool.map(self._roundtrip, pixels))
        out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255
        return out.contiguous()

    def _roundtrip(self, image: np.ndarray) -> np.ndarray:
        squeeze = image.shape[-1] == 1
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if squeeze else image).save(buffer, format="JPEG", quality=self.quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
        return decoded[..., None] if squeeze else decoded

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The identity, or kornia's differentiable JPEG at ``quality`` (see the class doc)."""
        if self.surrogate_kind == "identity":
            return x
        if x.shape[1] not in (1, 3):
            raise ValueError(f"JPEG needs 1 or 3 channels, got {x.shape[1]}")
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        quality = torch.tensor([float(self.quality)], device=x.device, dtype=torch.float32)
        coded = _kornia_jpeg()(rgb.float(), quality).clamp(0, 1).to(x.dtype)
        return coded.mean(dim=1, keepdim=True) if x.shape[1] == 1 else coded

    def extra_repr(self) -> str:
        return f"quality={self.quality}, surrogate={self.surrogate_kind!r}"


def _kornia_jpeg():
    try:
        from kornia.enhance import jpeg_codec_differentiable
    except ImportError as err:
        raise ImportError(
            "jpeg:surrogate=differentiable needs kornia (pip install kornia); "
            "or use the default surrogate=identity"
        ) from err
    return jpeg_codec_differentiable
