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
    GIL while coding). It is not differentiable: attacks see the identity (BPDA).
    """

    differentiable = False

    def __init__(self, *, quality: int = 75):
        super().__init__()
        if not isinstance(quality, int) or not 1 <= quality <= 95:
            raise ValueError(f"quality must be an integer in [1, 95], got {quality!r}")
        self.quality = quality

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
