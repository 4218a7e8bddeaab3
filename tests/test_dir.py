"""DIR denoiser (Zhou et al., ICML 2023): architecture against a per-view reference, masks, weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from robench import registry
from robench.checkpoint import CheckpointError, sha256_of
from robench.cli import main
from robench.defense import DefenseInputError
from robench.defenses.dir import DIR, TOKENS
from robench.masks import fixed_mask_view
from robench.target import EOT, Pipeline
from robench.threat import ThreatModel
from tests.conftest import DATA, needs_cifar

pytestmark = needs_cifar
SMALL = dict(encoder_depth=2, decoder_depth=1)  # the paper's widths, fewer blocks: fast on CPU


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches: on a loaded shared CPU extra intra-op threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 8 CIFAR-10 test images ``(8, 3, 32, 32)`` in [0, 1] and their labels."""
    data = np.load(DATA / "cifar10_test_head.npz")
    x = torch.from_numpy(data["x"][:8]).permute(0, 3, 1, 2).float().div(255).contiguous()
    return x, torch.from_numpy(data["y"][:8])


def masks_for(dir_: DIR, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return dir_.sample_masks(x, generator=torch.Generator().manual_seed(seed))


# --- an independent reference: one view at a time, token-first, as specs A1 describe ----------------------


def reference_restore(d: DIR, x: torch.Tensor, perm: torch.Tensor, *, released: bool = False) -> torch.Tensor:
    """DIR's restoration computed view by view with separate encoder calls (no batching, no padding).

    ``released=True`` un-shuffles the way the released decoder does: the view's tokens followed by
    mask tokens, read back through the inverse permutation (shifted by one for the CLS token).
    """
    enc, dec = d.encoder, d.decoder
    B, dim = len(x), d.embed_dim
    tokens = enc.patchify(x).flatten(2).permute(2, 0, 1) + enc.pos_embedding  # (T, B, C)
    forward = perm.t()  # (T, B): shuffled position -> token
    backward = forward.argsort(dim=0)  # token -> shuffled position
    shuffled = torch.gather(tokens, 0, forward[..., None].expand(-1, -1, dim))
    first = int(TOKENS * (1 - d.mask_ratio))
    others = d.views - 1
    sizes = [first] + [(TOKENS - first) // others + (i < (TOKENS - first) % others) for i in range(others)]
    bounds = np.cumsum([0] + sizes).tolist()
    decoded = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        seq = torch.cat([enc.cls_token.expand(-1, B, -1), shuffled[lo:hi]]).transpose(0, 1)
        for block in enc.transformer:
            seq = block(seq)
        feats = enc.layer_norm(seq).transpose(0, 1)  # (1 + n, B, C)
        if released:
            full = torch.cat([feats, dec.mask_token.expand(TOKENS - (hi - lo), B, -1)])
            index = torch.cat([torch.zeros(1, B, dtype=torch.long), backward + 1])
            full = torch.gather(full, 0, index[..., None].expand(-1, -1, dim))
        else:
            full = dec.mask_token.expand(TOKENS + 1, B, -1).clone()
            full[0] = feats[0]
            for b in range(B):
                full[1 + forward[lo:hi, b], b] = feats[1:, b]
        out = dec.transformer((full + dec.pos_embedding).transpose(0, 1))
        decoded.append(out[:, 1:])  # (B, T, C)
    values = d.conv1(torch.stack(decoded).mean(dim=0))  # (B, T, 12)
    img = torch.empty(B, 3, 32, 32)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                img[:, c, i::2, j::2] = values[:, :, 4 * c + 2 * i + j].reshape(B, 16, 16)
    return img


@pytest.mark.parametrize("options", [
    dict(mask_ratio=0.5), dict(mask_ratio=0.3), dict(mask_ratio=0.7), dict(mask_ratio=2 / 3, views=3),
], ids=["r0.5", "r0.3", "r0.7", "K3"])
def test_batched_restoration_equals_the_view_by_view_reference(options, cifar):
    d = DIR(**SMALL, **options)
    x = cifar[0][:3]
    perm = masks_for(d, x)
    with torch.no_grad():
        assert torch.allclose(d.restore(x, perm), reference_restore(d, x, perm), atol=1e-5)


def test_released_placement_reproduces_the_released_decoder_and_differs_from_exact(cifar):
    released = DIR(**SMALL, placement="released")
    exact = DIR(**SMALL)
    x = cifar[0][:3]
    perm = masks_for(exact, x)
    with torch.no_grad():
        ours = released.restore(x, perm)
        assert torch.allclose(ours, reference_restore(released, x, perm, released=True), atol=1e-5)
        assert (ours - exact.restore(x, perm)).abs().max() > 1e-3


def test_paper_size_matches_the_parameter_count_of_specs_a1():
    d = DIR()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for got, paper in ((count(d), 5.60e6), (count(d.encoder), 3.61e6), (count(d.decoder), 0.94e6),
                       (count(d.conv1), 1.05e6)):
        assert abs(got - paper) / paper < 0.02, (got, paper)
    assert d.sizes == (128, 128)
    assert len(d.encoder.transformer) == 8 and len(d.decoder.transformer) == 2
    assert d.encoder.transformer[0].attn.num_heads == 3 and d.encoder.transformer[0].attn.qkv.bias is None
    assert tuple(d.conv1.weight.shape) == (256, 256, 16) and d.conv1.stride == (16,)


def test_shapes(cifar):
    d = DIR(**SMALL, mask_ratio=0.75, views=4)
    x = cifar[0][:5]
    perm = d.sample_masks(x)
    assert perm.shape == (5, TOKENS) and perm.dtype == torch.long
    with torch.no_grad():
        assert d(x).shape == x.shape
        per_view = d.restore(x, perm, per_view=True)
        assert per_view.shape == (4, 5, 3, 32, 32)
        assert torch.allclose(per_view.mean(dim=0), d.restore(x, perm), atol=1e-5)  # the head is affine


@pytest.mark.parametrize("options", [dict(mask_ratio=0.5), dict(mask_ratio=0.3), dict(mask_ratio=0.75, views=4)],
                         ids=["r0.5", "r0.3", "K4"])
def test_every_token_is_visible_in_exactly_one_view(options, cifar):
    d = DIR(**SMALL, **options)
    x = cifar[0][:4]
    seen = []
    hook = d.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        d.purify_with_masks(x, masks_for(d, x))
    hook.remove()
    tokens = seen[0][:, 1:].view(d.views, len(x), TOKENS, -1)  # decoder input without CLS
    visible = (tokens != d.decoder.mask_token).any(dim=-1)  # a real token, not the mask token
    assert (visible.sum(dim=0) == 1).all()
    assert visible.sum(dim=2)[:, 0].tolist() == list(d.sizes)
    assert d.sizes[0] == int(256 * (1 - d.mask_ratio))


def test_masks_are_reproducible_from_a_generator_and_fresh_without(cifar):
    d = DIR(**SMALL)
    x = cifar[0][:4]
    assert torch.equal(masks_for(d, x, 1), masks_for(d, x, 1))
    assert not torch.equal(masks_for(d, x, 1), masks_for(d, x, 2))
    d.eval()  # eval mode redraws too: DIR has no train/eval switch for its masks
    with torch.no_grad():
        assert not torch.equal(d(x), d(x))
        perm = masks_for(d, x)
        assert torch.equal(d.purify_with_masks(x, perm), d.purify_with_masks(x, perm))


def test_gradient_reaches_every_input_pixel_and_every_parameter(cifar):
    d = DIR(clamp=False)
    x = cifar[0][:2].clone().requires_grad_(True)
    out = d.purify_with_masks(x, masks_for(d, x))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).all()
    silent = [name for name, p in d.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient reaches {silent}"


def test_clamp_option(cifar):
    x = cifar[0][:4]
    raw, clamped = DIR(**SMALL, clamp=False), DIR(**SMALL)
    perm = masks_for(raw, x)
    with torch.no_grad():
        unclamped = raw.purify_with_masks(x, perm)
        assert unclamped.min() < 0 or unclamped.max() > 1  # random init: the raw head leaves [0, 1]
        assert torch.equal(clamped.purify_with_masks(x, perm), unclamped.clamp(0, 1))


def test_mask_adaptive_attack_sees_gradients_through_the_fixed_masks(cifar):
    x, y = cifar[0][:4], cifar[1][:4]
    model = registry.build("models", "resnet18-standard").eval()
    d = DIR(**SMALL)
    perm = masks_for(d, x)
    view = fixed_mask_view(d, perm)
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(Pipeline(model, view)(x_req), y).backward()
    assert torch.isfinite(x_req.grad).all() and x_req.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(view(x), d.purify_with_masks(x, perm))

    used = []
    purify_with_masks = d.purify_with_masks
    d.purify_with_masks = lambda images, masks: (used.append(masks), purify_with_masks(images, masks))[1]
    attack = registry.build("attacks", "mask-adaptive:steps=2")
    threat = ThreatModel("Linf", 8 / 255)
    x_adv = attack(Pipeline(model, d), x, y, threat, seed=0)
    assert len(used) >= 2 and all(torch.equal(m, used[0]) for m in used)  # one draw, fixed for every step
    assert (threat.violation(x_adv, x) <= 1e-6).all() and not torch.equal(x_adv, x)


def test_eot_view_gives_a_finite_nonzero_gradient(cifar):
    x, y = cifar[0][:2], cifar[1][:2]
    model = registry.build("models", "resnet18-standard").eval()
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(EOT(Pipeline(model, DIR(**SMALL)), draws=3)(x_req), y).backward()
    assert torch.isfinite(x_req.grad).all() and x_req.grad.abs().sum() > 0


# --- weights -------------------------------------------------------------------------------------------------


def test_saved_state_dict_reloads_to_identical_outputs(tmp_path, cifar):
    x = cifar[0][:3]
    trained = DIR(**SMALL, init_seed=0)
    path = tmp_path / "dir.pt"
    torch.save(trained.state_dict(), path)
    loaded = DIR(**SMALL, init_seed=1, weights=str(path))  # another init, so equality comes from the file
    assert loaded.checkpoints == {"dir.pt": sha256_of(path)} and DIR(**SMALL).checkpoints == {}
    perm = masks_for(trained, x)
    with torch.no_grad():
        assert torch.equal(loaded.purify_with_masks(x, perm), trained.purify_with_masks(x, perm))
        assert not torch.equal(DIR(**SMALL, init_seed=1).purify_with_masks(x, perm), trained.purify_with_masks(x, perm))


def test_released_layout_loads(tmp_path, cifar):
    """A DataParallel state dict of the released module, with its two unused layers, loads."""
    x = cifar[0][:2]
    trained = DIR(**SMALL)
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    state["module.patchify.weight"] = torch.zeros(192, 3, 2, 2)
    state["module.patchify.bias"] = torch.zeros(192)
    state["module.decoder.head.weight"] = torch.zeros(12, 192)
    state["module.decoder.head.bias"] = torch.zeros(12)
    torch.save({"state_dict": state}, tmp_path / "released.pth")
    loaded = DIR(**SMALL, init_seed=1, weights=str(tmp_path / "released.pth"))
    perm = masks_for(trained, x)
    with torch.no_grad():
        assert torch.equal(loaded.purify_with_masks(x, perm), trained.purify_with_masks(x, perm))


def test_bad_weights_are_named(tmp_path):
    deeper = tmp_path / "deeper.pt"
    torch.save(DIR(encoder_depth=3, decoder_depth=1).state_dict(), deeper)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(first: \['encoder\.transformer\.2\."):
        DIR(**SMALL, weights=str(deeper))
    module = tmp_path / "module.pt"
    torch.save(DIR(**SMALL), module)  # a pickled whole module, as the released code saves
    with pytest.raises(CheckpointError, match="weights_only=True"):
        DIR(**SMALL, weights=str(module))
    with pytest.raises(CheckpointError, match="does not exist"):
        DIR(**SMALL, weights=str(tmp_path / "missing.pt"))


# --- pre-training loss ---------------------------------------------------------------------------------------


def test_pretrain_loss_is_the_released_per_patch_mse_and_training_reduces_it(cifar):
    x = cifar[0][:4]
    x_adv = (x + 8 / 255 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))).clamp(0, 1)
    d = DIR(**SMALL)
    perm = masks_for(d, x)
    patches = lambda img: img.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(4, 256, 12)  # noqa: E731
    with torch.no_grad():
        per_patch = ((patches(d.restore(x_adv, perm)) - patches(x)) ** 2).mean(dim=-1)
        assert torch.allclose(d.pretrain_loss(x_adv, x, masks=perm), per_patch.sum() / (4 * 256), rtol=1e-5)
    optimiser = torch.optim.AdamW(d.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = d.pretrain_loss(x_adv, x, masks=perm)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        assert d.pretrain_loss(x_adv, x, masks=perm).item() < 0.8 * losses[0]  # measured 0.20 vs 0.47


# --- bad input and listing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("options, mentions", [
    (dict(embed_dim=100), "multiple of 12"),
    (dict(num_heads=5), "num_heads=5"),
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=0.999), "empty view"),
    (dict(views=1), "views"),
    (dict(placement="code"), "placement"),
    (dict(encoder_depth=0), "encoder_depth"),
])
def test_bad_options_are_named(options, mentions):
    with pytest.raises(ValueError, match=mentions):
        DIR(**options)


def test_bad_images_and_masks_are_named(cifar):
    d = DIR(**SMALL)
    x = cifar[0][:2]
    with pytest.raises(DefenseInputError, match="32x32"):
        d(F.interpolate(x, size=64))
    perm = masks_for(d, x)
    for bad, mentions in ((perm[:1], r"\(2, 256\)"), (perm.float(), "integer"), (perm.clone().fill_(0), "permutations")):
        with pytest.raises(ValueError, match=mentions):
            d.purify_with_masks(x, bad)


def test_ls_says_an_unweighted_dir_is_untrained():
    result = CliRunner().invoke(main, ["ls", "defenses"], catch_exceptions=False)
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("dir "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i][:1].isspace()), len(lines))
    row = " ".join(" ".join(lines[start:end]).split())  # the row's wrapped lines
    assert "stochastic=True" in row and "differentiable=True" in row and "untrained without weights=" in row
