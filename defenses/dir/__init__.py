"""DIR (Zhou et al., ICML 2023) as one package: the denoiser (:mod:`.model`) and its trainer (:mod:`.trainer`)."""

from robench.defenses.dir.model import DIR, IMAGE_SHAPE, PATCH, TOKENS, VALUES, view_sizes

__all__ = ["DIR", "IMAGE_SHAPE", "PATCH", "TOKENS", "VALUES", "view_sizes"]
