"""DIR (Zhou et al., "Eliminating Adversarial Noise via Information Discard and Robust Representation
Restoration", ICML 2023): a masked-autoencoder ViT that restores complementary token views."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from robench.checkpoint import CheckpointError, load_weights
from robench.defense import DefenseInputError, seeded_init
from robench.masks import MaskedDefense

IMAGE_SHAPE = (3, 32, 32)
PATCH = 2
TOKENS = (IMAGE_SHAPE[1] // PATCH) * (IMAGE_SHAPE[2] // PATCH)  # 256
VALUES = IMAGE_SHAPE[0] * PATCH * PATCH  # 12 pixel values per token
PLACEMENTS = ("exact", "released")
# Layers the released DIR_ViT defines but never calls; their keys are dropped when loading its state dict.
UNUSED_RELEASED_KEYS = ("patchify.weight", "patchify.bias", "decoder.head.weight", "decoder.head.bias")


class DIR(MaskedDefense):
    """The DIR denoiser: complementary token views, a shared ViT encoder/decoder, averaged features.

    Architecture of specs A1 (``chenyyyykun/DIR``, ``pretrain_model.py``, class ``DIR_ViT``):
    a Conv2d(3 -> ``embed_dim``, 2x2, stride 2) cuts a 3x32x32 image into 256 tokens, a learned
    position embedding is added; each image's 256 tokens are shuffled by a random permutation
    (its mask) and cut into ``views`` complementary views; every view gets a CLS token and goes
    through the shared encoder (``encoder_depth`` timm ``Block``\\ s, ``num_heads`` heads, MLP
    ratio 4, no qkv bias, no dropout, then LayerNorm). The shared decoder puts each view's tokens
    back at their positions, fills the other positions with a learned mask token, adds a
    257-token position embedding and runs ``decoder_depth`` blocks; the CLS token is dropped.
    The views' decoder features are averaged (Eq. 5) and the head, a Conv1d(256 -> 256, kernel
    and stride ``embed_dim / 12``) with the *tokens as channels*, maps each token to 12 values,
    un-patchified to (B, 3, 32, 32). Parameter names and shapes follow the released module, so
    its state dict loads (see ``weights``); at the paper's size the module has 5.59 M parameters.

    Views: the permutation's first ``int(256 * (1 - mask_ratio))`` tokens are view 1; with
    ``views=2`` (the paper's K) the other tokens are view 2, so the two views are complementary
    for any ratio (30 % / 70 % give 179 + 77 and 76 + 180 tokens). With ``views=K > 2`` the tokens
    after view 1 are split into K - 1 views as evenly as possible (first ones one token longer),
    so every token is still visible in exactly one view; ``mask_ratio = 1 - 1/K`` gives K
    equal views. The attribute ``sizes`` holds the tokens per view. All views go through the encoder in one batched call (padded to the longest
    view, with the padding hidden from attention when the sizes differ).

    Masks (:class:`~robench.masks.MaskedDefense`) are the permutations, ``(B, 256)`` int64;
    :meth:`purify` draws fresh ones on every call, in eval mode too (DIR has no train/eval switch
    for its masks), so DIR is stochastic: white-box attacks use EOT or fix the masks
    (``mask-adaptive``). It is differentiable in its input.

    Untrained unless ``weights`` is given: without it the module is randomly initialised (the
    starting point of ``robench train dir``) and evaluating it is meaningless.

    Named deviations:

    * ``placement="released"`` reproduces a bug of the released decoder, which un-shuffles
      every view with the permutation's inverse as if its tokens were the permutation's
      *leading* ones: view k's tokens land on the positions of ``perm[:len(view k)]`` (view 1's
      positions at ratio 0.5), not on their own, and mask tokens fill the rest. Needed to
      reproduce weights trained with the released code; ``"exact"`` (default) puts every token
      back where it came from, as specs A1 and Eq. 5 describe.
    * ``clamp=True`` (default) clamps the output to [0, 1], which the Defense contract requires
      (:class:`~robench.defense.Defense` does not clamp for its subclasses); the released code
      has no clamp, and ``clamp=False`` returns its raw output, which may leave [0, 1] (then the
      module breaks the Defense contract: use it for training or comparisons with the code).

    Args:
        encoder_depth: encoder blocks (8; Table 5 ablates 4, 6, 12).
        decoder_depth: decoder blocks (2; Table 5 ablates 1, 4).
        embed_dim: token width (192); a multiple of 12 and of ``num_heads``.
        num_heads: attention heads of every block (3).
        mask_ratio: fraction of the tokens hidden from view 1, in (0, 1) (0.5; ablated 0.3, 0.7).
        views: number K >= 2 of complementary views (2).
        placement: ``"exact"`` or ``"released"`` (see above).
        clamp: clamp the purified output to [0, 1] (see above).
        init_seed: seed of the random initialisation, so a spec always builds the same module (0).
        weights: path of a state dict saved by ``torch.save(dir.state_dict())``, optionally under
            a ``"state_dict"`` key; loaded with ``weights_only=True``, its sha256 recorded in
            :attr:`checkpoints`. A ``module.`` prefix (DataParallel) and the released module's
            unused layers (a top-level ``patchify`` conv, a ``decoder.head`` Linear) are dropped.
    """

    differentiable = True
    needs_training = True
    version = "1"
    # ``robench train dir`` runs this trainer: pre-training (Eq. 2) and main training (Algorithm 1).
    trainer = "robench.defenses.dir.trainer:DIRTraining"

    def __init__(
        self,
        *,
        encoder_depth: int = 8,
        decoder_depth: int = 2,
        embed_dim: int = 192,
        num_heads: int = 3,
        mask_ratio: float = 0.5,
        views: int = 2,
        placement: str = "exact",
        clamp: bool = True,
        init_seed: int = 0,
        weights: "str | None" = None,
    ):
        super().__init__()
        for name, value, least in (("encoder_depth", encoder_depth, 1), ("decoder_depth", decoder_depth, 1),
                                   ("embed_dim", embed_dim, 1), ("num_heads", num_heads, 1), ("views", views, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"DIR's {name} must be an integer >= {least}, got {value!r}")
        if embed_dim % VALUES or embed_dim % num_heads:
            raise ValueError(
                f"DIR's embed_dim must be a multiple of {VALUES} (the head maps embed_dim/{VALUES} features to each "
                f"of a token's {VALUES} pixel values) and of num_heads={num_heads}; got {embed_dim}"
            )
        if placement not in PLACEMENTS:
            raise ValueError(f"DIR's placement must be one of {PLACEMENTS}, got {placement!r}")
        self.sizes = view_sizes(mask_ratio, views)
        self.encoder_depth = encoder_depth
        self.decoder_depth = decoder_depth
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.mask_ratio = float(mask_ratio)
        self.views = views
        self.placement = placement
        self.clamp = bool(clamp)
        self.init_seed = init_seed
        self.weights = None if weights is None else str(weights)
        with seeded_init("DIR", init_seed):
            self.encoder = _Encoder(embed_dim, num_heads, encoder_depth)
            self.decoder = _Decoder(embed_dim, num_heads, decoder_depth)
            width = embed_dim // VALUES
            self.conv1 = nn.Conv1d(TOKENS, TOKENS, width, stride=width)  # the head; named as in the released code
        self._checkpoints = {} if weights is None else load_weights(self, weights, _state_dict)


    def sample_masks(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Independent uniform permutations of the 256 tokens, one per image: ``(B, 256)`` int64 (DIR's PatchShuffle)."""
        device = generator.device if generator is not None else x.device
        noise = torch.rand((len(x), TOKENS), generator=generator, device=device)
        return noise.argsort(dim=1).to(x.device)

    def purify_with_masks(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Restore ``x`` ``(B, 3, 32, 32)`` from the views cut by the permutations ``masks`` ``(B, 256)``."""
        out = self.restore(x, masks)
        if self.clamp:
            out = out.clamp(0, 1)
        return out.to(x.dtype)

    def restore(self, x: torch.Tensor, masks: torch.Tensor, *, per_view: bool = False) -> torch.Tensor:
        """Unclamped restoration (Eq. 5): the average over the views ``(B, 3, 32, 32)``, or each view's ``(K, B, 3, 32, 32)``.

        Runs in the parameters' dtype. Averaging the views' features before the head, as the
        released code does, equals averaging the per-view images, because the head is affine.
        """
        _check_shape(x)
        perm = self._check_masks(masks, x)
        dtype = self.conv1.weight.dtype
        tokens = self.encoder.embed(x.to(dtype))  # (B, T, C)
        batch, dim, k = len(x), self.embed_dim, len(self.sizes)
        shuffled = tokens.gather(1, perm[..., None].expand(-1, -1, dim))
        longest = max(self.sizes)
        padded = [view if view.shape[1] == longest else F.pad(view, (0, 0, 0, longest - view.shape[1]))
                  for view in shuffled.split(self.sizes, dim=1)]
        encoded = self.encoder(torch.cat(padded), self._padding_mask(batch, tokens))  # (K*B, 1 + L, C)
        # Decoder input: each position takes its view token, or the mask token (index `longest`).
        body = torch.cat([encoded[:, 1:], self.decoder.mask_token.expand(k * batch, 1, dim)], dim=1)
        placed = body.gather(1, self._sources(perm)[..., None].expand(-1, -1, dim))
        features = self.decoder(torch.cat([encoded[:, :1], placed], dim=1)).view(k, batch, TOKENS, dim)
        if per_view:
            return self._head(features.flatten(0, 1)).view(k, batch, *IMAGE_SHAPE)
        return self._head(features.mean(dim=0))

    def pretrain_loss(self, x_adv: torch.Tensor, x_clean: torch.Tensor, *, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-training loss (DIR Eq. 2) as the released code computes it, on the unclamped restoration of ``x_adv``.

        Squared error per patch, averaged over a patch's 12 values, the 256 patches and the batch
        (that is the mean over all pixels) between the views' average and ``x_clean``; fresh
        masks unless ``masks`` are given.
        """
        if x_clean.shape != x_adv.shape:
            raise ValueError(f"DIR's pretrain_loss needs clean images shaped like x_adv {tuple(x_adv.shape)}, "
                             f"got {tuple(x_clean.shape)}")
        masks = self.sample_masks(x_adv) if masks is None else masks
        restored = self.restore(x_adv, masks)
        return F.mse_loss(restored, x_clean.to(restored.dtype))

    def _check_masks(self, masks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (len(x), TOKENS) or masks.is_floating_point():
            got = f"{masks.dtype} {tuple(masks.shape)}" if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ValueError(f"DIR's masks are integer token permutations shaped ({len(x)}, {TOKENS}) "
                             f"(from sample_masks); got {got}")
        perm = masks.to(x.device, torch.long)
        if not torch.equal(perm.sort(dim=1).values, torch.arange(TOKENS, device=x.device).expand_as(perm)):
            raise ValueError(f"DIR's masks must be permutations of 0..{TOKENS - 1} in every row (from sample_masks)")
        return perm

    def _padding_mask(self, batch: int, tokens: torch.Tensor) -> torch.Tensor | None:
        """Additive attention mask hiding the padding of shorter views, ``(K*B, 1, 1, 1 + L)``; None when none is padded."""
        longest = max(self.sizes)
        if min(self.sizes) == longest:
            return None
        lengths = torch.tensor(self.sizes, device=tokens.device).repeat_interleave(batch)  # view-major, like the batch
        keys = torch.arange(1 + longest, device=tokens.device)
        hidden = keys[None, :] > lengths[:, None]  # key 0 is the CLS token
        mask = torch.zeros(hidden.shape, dtype=tokens.dtype, device=tokens.device).masked_fill_(hidden, float("-inf"))
        return mask[:, None, None, :]

    def _sources(self, perm: torch.Tensor) -> torch.Tensor:
        """For each view and position, the index of its token in the view, or of the mask token: ``(K*B, 256)``."""
        rank = perm.argsort(dim=1)  # position of each token in the shuffled order
        longest = max(self.sizes)
        sources, start = [], 0
        for size in self.sizes:
            index = rank - start if self.placement == "exact" else rank
            sources.append(torch.where((index >= 0) & (index < size), index, longest))
            start += size
        return torch.cat(sources)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """Token-axis Conv1d ``(N, 256, C) -> (N, 256, 12)``, then un-patchify to ``(N, 3, 32, 32)``."""
        values = self.conv1(features)
        side = IMAGE_SHAPE[1] // PATCH
        grid = values.view(len(values), side, side, IMAGE_SHAPE[0], PATCH, PATCH)  # token h*16+w, values (c, p1, p2)
        return grid.permute(0, 3, 1, 4, 2, 5).reshape(len(values), *IMAGE_SHAPE)


class _Encoder(nn.Module):
    """Patch embedding and the shared ViT encoder (released ``MAE_Encoder``'s parameters)."""

    def __init__(self, dim: int, heads: int, depth: int):
        super().__init__()
        self.patchify = nn.Conv2d(IMAGE_SHAPE[0], dim, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(TOKENS, 1, dim))  # token-first, as released
        self.transformer = nn.Sequential(*[_block(dim, heads) for _ in range(depth)])
        self.layer_norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens with position embedding, ``(B, 256, C)`` in raster order."""
        return self.patchify(x).flatten(2).transpose(1, 2) + self.pos_embedding.transpose(0, 1)

    def forward(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        for block in self.transformer:
            x = block(x, attn_mask=attn_mask)
        return self.layer_norm(x)


class _Decoder(nn.Module):
    """The shared ViT decoder (released ``MAE_Decoder``'s used parameters)."""

    def __init__(self, dim: int, heads: int, depth: int):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(TOKENS + 1, 1, dim))
        self.transformer = nn.Sequential(*[_block(dim, heads) for _ in range(depth)])
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLS + 256 tokens ``(N, 257, C)`` in raster order -> decoded tokens ``(N, 256, C)``."""
        return self.transformer(x + self.pos_embedding.transpose(0, 1))[:, 1:]


def _block(dim: int, heads: int) -> Block:
    # torch's LayerNorm (eps 1e-5), the default of the timm 0.6 Block the released code ran on.
    return Block(dim, heads, mlp_ratio=4.0, qkv_bias=False, norm_layer=nn.LayerNorm)


def view_sizes(mask_ratio: float, views: int) -> tuple[int, ...]:
    """Tokens per view: ``int(256 * (1 - mask_ratio))`` for view 1, the rest split evenly over the others (DIR)."""
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 < mask_ratio < 1:
        raise ValueError(f"DIR's mask_ratio must be a number in (0, 1), got {mask_ratio!r}")
    first = int(TOKENS * (1 - mask_ratio))
    rest, others = TOKENS - first, views - 1
    if first < 1 or rest < others:
        raise ValueError(
            f"DIR's mask_ratio={mask_ratio} with views={views} leaves an empty view (view 1 gets {first} of "
            f"{TOKENS} tokens, {rest} remain for {others} views); use 1 - 1/views for equal views"
        )
    return (first, *(rest // others + (i < rest % others) for i in range(others)))


def _check_shape(x: torch.Tensor) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise DefenseInputError(
            f"DIR is built for {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]} images (CIFAR-10, SVHN): its head "
            f"is fixed to 256 tokens; got a batch shaped {tuple(x.shape)} (resize or crop to 32x32)"
        )


def _state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    """The state dict in a DIR checkpoint, without a ``module.`` prefix or the released module's unused layers."""
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(
            f"{source} holds no state dict (a mapping of names to tensors); save one with "
            "torch.save(dir.state_dict(), path) (a pickled whole module cannot be loaded with weights_only=True)"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return {k: v for k, v in state.items() if k not in UNUSED_RELEASED_KEYS}
