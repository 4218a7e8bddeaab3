"""TVM (Guo et al. 2018) and ME-Net (Yang et al. 2019): solvers against independent references, mask semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robench import registry
from robench.defense import BPDA, DefenseInputError, gradient_view
from robench.defenses.me_net import MENet
from robench.defenses.tvm import TVM, tv_bregman
from robench.masks import FixedMasks, MaskedDefense, fixed_mask_view
from tests.conftest import DATA, needs_cifar

DEFENSES = [TVM, MENet]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(b=4, c=3, h=16, w=16, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


# --- independent references (plain numpy, row-major loops, float64) -----------------------------


def _ref_tv_bregman(image, mask, fidelity, max_iter, gs_iter=10, eps=0.01, isotropic=True):
    """Port of Guo et al.'s patched ``_tv_bregman`` (H, W, C) with lexicographic Gauss-Seidel.

    One change: a dropped pixel divides by its number of neighbours, not by 4 (border bug).
    """
    rows, cols, dims = image.shape
    u = image.copy()
    dx, dy, bx, by, z = (np.zeros_like(u) for _ in range(5))
    uprev = image.copy()
    lam, rmse, i = 2 * fidelity, np.inf, 0
    while i < max_iter and rmse > eps:
        for _ in range(gs_iter):
            for k in range(dims):
                for r in range(rows):
                    for c in range(cols):
                        inner, nbs = z[r, c, k], 0
                        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                            if 0 <= rr < rows and 0 <= cc < cols:
                                inner += u[rr, cc, k]
                                nbs += 1
                        if mask[r, c, k]:
                            u[r, c, k] = (lam * inner + fidelity * image[r, c, k]) / (fidelity + nbs * lam)
                        else:
                            u[r, c, k] = inner / nbs
        rmse = 0.0
        for k in range(dims):
            for r in range(rows):
                for c in range(cols):
                    ux = 0.0 if c == cols - 1 else u[r, c + 1, k] - u[r, c, k]
                    uy = 0.0 if r == rows - 1 else u[r + 1, c, k] - u[r, c, k]
                    tx, ty = ux + bx[r, c, k], uy + by[r, c, k]
                    if isotropic:
                        s = np.sqrt(tx * tx + ty * ty)
                        dxx, dyy = s * lam * tx / (s * lam + 1), s * lam * ty / (s * lam + 1)
                    else:
                        dxx = np.sign(tx) * max(abs(tx) - 1 / lam, 0)
                        dyy = np.sign(ty) * max(abs(ty) - 1 / lam, 0)
                    dx[r, c, k], dy[r, c, k] = dxx, dyy
                    bx[r, c, k] += ux - dxx
                    by[r, c, k] += uy - dyy
                    z[r, c, k] = -dx[r, c, k] - dy[r, c, k] + bx[r, c, k] + by[r, c, k]
                    if r > 0:
                        z[r, c, k] += dy[r - 1, c, k] - by[r - 1, c, k]
                    if c > 0:
                        z[r, c, k] += dx[r, c - 1, k] - bx[r, c - 1, k]
                    rmse += (u[r, c, k] - uprev[r, c, k]) ** 2
        rmse = np.sqrt(rmse / u.size)
        uprev = u.copy()
        i += 1
    return u


def _ref_usvt_concat(img, mask, svd_prob):
    """ME-Net's ``usvt.forward`` for one (C, H, W) image in [0, 1] and an (H, C*W) 0/1 mask (repo code)."""
    c, h, w = img.shape
    img = img * 2 - 1
    img = np.concatenate([img[k] for k in range(c)], axis=1)
    p_obs = len(mask[mask == 1]) / (h * w * c)
    u, sigma, v = np.linalg.svd(img * mask)
    S = np.zeros((h, w))
    for j in range(int(svd_prob * h)):
        S[j][j] = sigma[j]
    S = np.concatenate((S, np.zeros((h, w * (c - 1)))), axis=1)
    W = np.clip(np.dot(np.dot(u, S), v) / p_obs, -1, 1)
    est = (W + 1) / 2
    return np.stack([est[:, k * w:(k + 1) * w] for k in range(c)])


def _tv_objective(u, f, mask, fidelity, isotropic=True):
    """``TV(u) + fidelity/2 * ||mask * (u - f)||^2`` with forward differences (Neumann boundary)."""
    ux = torch.zeros_like(u)
    uy = torch.zeros_like(u)
    ux[..., :, :-1] = u[..., :, 1:] - u[..., :, :-1]
    uy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    tv = (ux**2 + uy**2).sqrt().sum() if isotropic else (ux.abs() + uy.abs()).sum()
    return (tv + fidelity / 2 * (mask * (u - f) ** 2).sum()).item()


# --- TVM ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("isotropic", [True, False])
def test_tvm_solver_reaches_the_reference_minimum(isotropic):
    # Red-black and row-major Gauss-Seidel differ per iterate, not in what split Bregman converges to.
    rng = np.random.default_rng(0)
    x = rng.random((7, 9, 2))  # non-square, 2 channels: catches transposed axes
    keep = rng.random(x.shape) >= 0.5
    ref = _ref_tv_bregman(x * keep, keep, 1 / 0.03, max_iter=100, eps=0.0, isotropic=isotropic)
    ref = torch.from_numpy(ref).permute(2, 0, 1)[None]
    f = torch.from_numpy(x * keep).permute(2, 0, 1)[None]
    mask = torch.from_numpy(keep).permute(2, 0, 1)[None]
    out = tv_bregman(f, mask, fidelity=1 / 0.03, max_iter=100, tol=0.0, isotropic=isotropic)
    j_out, j_ref = (_tv_objective(u, f, mask, 1 / 0.03, isotropic) for u in (out, ref))
    assert abs(j_out - j_ref) < 1e-4 * j_ref
    assert j_out < 0.6 * _tv_objective(torch.from_numpy(x).permute(2, 0, 1)[None], f, mask, 1 / 0.03, isotropic)
    if isotropic:  # unique minimiser (anisotropic inpainting has flat directions)
        assert (out - ref).abs().max() < 5e-3


@needs_cifar  # the bounds hold for a natural image patch, not for noise
def test_tvm_default_early_stop_stays_close_to_the_reference():
    rng = np.random.default_rng(1)
    x = np.load(DATA / "cifar10_test_head.npz")["x"][0, :12, :12] / 255
    keep = rng.random(x.shape) >= 0.5
    ref = _ref_tv_bregman(x * keep, keep, 1 / 0.03, max_iter=100, eps=0.01)
    to_torch = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None]  # noqa: E731
    out = TVM().purify_with_masks(to_torch(x), to_torch(keep))[0].permute(1, 2, 0).numpy()
    diff = np.abs(out - ref)
    assert diff.mean() < 3e-3 and diff.max() < 0.05
    assert np.abs(out - x).mean() < 0.5 * np.abs(x * keep - x).mean()


def test_tvm_minimises_the_masked_tv_objective():
    x = _images(2, 3, 16, 16)
    tvm = TVM(tol=0.0)
    keep = tvm.sample_masks(x, generator=torch.Generator().manual_seed(0))
    f = (x * keep).double()
    u = tv_bregman(f, keep, fidelity=1 / 0.03, tol=0.0)
    j_out = _tv_objective(u, f, keep, 1 / 0.03)
    # The minimiser beats both natural candidates: the clean image and the zero-filled input.
    assert j_out < _tv_objective(x.double(), f, keep, 1 / 0.03)
    assert j_out < 0.2 * _tv_objective(f, f, keep, 1 / 0.03)


def test_tvm_recovers_a_piecewise_constant_image_from_half_its_pixels():
    x = torch.full((2, 3, 32, 32), 0.2)
    x[:, 0, :, 10:20] = 0.9
    x[:, 1, 5:, :] = 0.6
    x[:, 2, :, 16:] = 0.0
    x[1] = 1 - x[1]
    tvm = TVM(tol=0.0)
    keep = tvm.sample_masks(x, generator=torch.Generator().manual_seed(0))
    err = (tvm.purify_with_masks(x, keep) - x).abs()
    assert err.mean() < 0.01 and err.median() < 0.01  # dropped pixels are 0: error 0.25 before
    assert (x * keep - x).abs().mean() > 0.2


def test_tvm_masks_drop_each_pixel_and_channel_independently():
    x = torch.rand(8, 3, 32, 32)
    keep = TVM(drop_prob=0.3).sample_masks(x, generator=torch.Generator().manual_seed(0))
    assert keep.shape == x.shape and keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - 0.7) < 0.02
    assert not torch.equal(keep[:, 0], keep[:, 1])


# --- ME-Net -----------------------------------------------------------------------------------------


def test_menet_matches_the_repo_usvt():
    x = _images(3, 3, 32, 32).double()
    menet = MENet()
    masks = menet.sample_masks(x, generator=torch.Generator().manual_seed(0))
    out = menet.purify_with_masks(x, masks)
    for i in range(len(x)):
        mask = masks[i].permute(1, 0, 2).reshape(32, 96).numpy().astype(int)  # (C, H, W) -> H x CW
        ref = _ref_usvt_concat(x[i].numpy(), mask, 0.8)
        assert np.abs(out[i].numpy() - ref).max() < 1e-9


def test_menet_with_everything_observed_and_kept_reproduces_the_image():
    x = _images(4, 3, 32, 32)
    menet = MENet(p=1.0, svd_prob=1.0)
    masks = menet.sample_masks(x)
    assert bool(masks.all())
    torch.testing.assert_close(menet(x), x, atol=2e-5, rtol=0)
    torch.testing.assert_close(MENet(p=1.0, svd_prob=1.0, channels="separate")(x), x, atol=2e-5, rtol=0)


@pytest.mark.parametrize("method", ["usvt", "softimpute"])
def test_menet_recovers_a_rank_one_image_from_half_its_pixels(method):
    g = torch.Generator().manual_seed(0)
    a = 0.2 + 0.7 * torch.rand(64, generator=g, dtype=torch.float64)
    b = torch.rand(3 * 64, generator=g, dtype=torch.float64) * 2 - 1
    matrix = torch.outer(a, b)  # the H x 3W concat matrix, in ME-Net's [-1, 1] space: rank 1
    x = ((matrix + 1) / 2).reshape(64, 3, 64).permute(1, 0, 2)[None].contiguous()
    menet = MENet(p=0.5, svd_prob=1 / 64, method=method)  # USVT keeps 1 singular value
    masks = menet.sample_masks(x, generator=g)
    assert abs(masks.double().mean().item() - 0.5) < 0.02
    out = menet.purify_with_masks(x, masks)
    estimate = (out[0] * 2 - 1).permute(1, 0, 2).reshape(64, 192)
    relative_error = ((estimate - matrix).norm() / matrix.norm()).item()
    # Zero-filling is off by sqrt(1 - p) ~ 0.71; USVT's error is O(sqrt((H + 3W) / (p H 3W))) ~ 0.2.
    assert relative_error < {"usvt": 0.3, "softimpute": 0.05}[method]


def test_menet_softimpute_keeps_observed_pixels():
    x = _images(2, 3, 16, 16).double()
    menet = MENet(method="softimpute")
    masks = menet.sample_masks(x, generator=torch.Generator().manual_seed(0))
    out = menet.purify_with_masks(x, masks)
    torch.testing.assert_close(out[masks], x[masks])


def test_menet_masks_concat_and_separate_layouts():
    x = torch.rand(5, 3, 8, 8)
    concat = MENet(p=0.3).sample_masks(x, generator=torch.Generator().manual_seed(0))
    separate = MENet(p=0.3, channels="separate").sample_masks(x, generator=torch.Generator().manual_seed(0))
    assert concat.shape == (5, 3, 8, 8) and separate.shape == (5, 1, 8, 8)
    assert abs(concat.float().mean().item() - 0.3) < 0.05
    with pytest.raises(ValueError, match=r"\(5, 1, 8, 8\)"):
        MENet(channels="separate").purify_with_masks(x, concat)


# --- shared contract: masks, shapes, range, errors, registry, BPDA ---------------------------------


@pytest.mark.parametrize("cls", DEFENSES)
def test_fixed_masks_give_deterministic_outputs_and_different_masks_differ(cls):
    x = _images(3, 3, 16, 16)
    defense = cls()
    assert isinstance(defense, MaskedDefense) and defense.stochastic and not defense.differentiable
    a = defense.sample_masks(x, generator=torch.Generator().manual_seed(1))
    b = defense.sample_masks(x, generator=torch.Generator().manual_seed(1))
    c = defense.sample_masks(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(defense.purify_with_masks(x, a), defense.purify_with_masks(x, b))
    assert torch.equal(FixedMasks(defense, a)(x), FixedMasks(defense, a)(x))
    assert (defense.purify_with_masks(x, a) - defense.purify_with_masks(x, c)).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    assert not torch.equal(defense(x), defense(x))  # fresh masks per call


@pytest.mark.parametrize("cls", DEFENSES)
@pytest.mark.parametrize("batch", [1, 64])
def test_shape_dtype_and_range_are_kept(cls, batch):
    x = _images(batch, 3, 32, 32)
    out = cls()(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("cls", DEFENSES)
def test_wrong_input_is_a_clear_error(cls):
    defense = cls()
    with pytest.raises(DefenseInputError, match=r"\(B, C, H, W\)"):
        defense(torch.rand(3, 32, 32))
    with pytest.raises(DefenseInputError, match="float"):
        defense((torch.rand(1, 3, 8, 8) * 255).to(torch.uint8))
    with pytest.raises(DefenseInputError, match=r"\[0, 1\]"):
        defense(torch.rand(1, 3, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match="masks"):
        defense.purify_with_masks(torch.rand(2, 3, 8, 8), torch.ones(2, 3, 8, 9, dtype=torch.bool))


@pytest.mark.parametrize(
    "spec", ["tvm:drop_prob=1.0", "tvm:weight=0", "tvm:max_iter=0", "me-net:p=0", "me-net:svd_prob=1.5",
             'me-net:method="nucnorm"', 'me-net:channels="rgb"'],
)
def test_bad_hyperparameters_are_rejected(spec):
    with pytest.raises((ValueError, registry.PluginError)):
        registry.build("defenses", spec)


def test_registry_builds_both_with_keyword_options():
    tvm = registry.build("defenses", "tvm:drop_prob=0.3,weight=0.05")
    menet = registry.build("defenses", 'me-net:p=0.7,method="softimpute"')
    assert isinstance(tvm, TVM) and (tvm.drop_prob, tvm.weight) == (0.3, 0.05)
    assert isinstance(menet, MENet) and (menet.p, menet.method) == (0.7, "softimpute")
    with pytest.raises(TypeError):
        TVM(0.5)  # keyword-only


@pytest.mark.parametrize("cls", DEFENSES)
def test_attacks_see_the_identity_gradient_also_with_fixed_masks(cls):
    x = _images(2, 3, 8, 8).requires_grad_()
    defense = cls()
    view = gradient_view(defense)
    assert isinstance(view, BPDA)
    view(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    masks = defense.sample_masks(x.detach())
    fixed = fixed_mask_view(defense, masks)
    torch.testing.assert_close(fixed(x.detach()), defense.purify_with_masks(x.detach(), masks))


# --- real data ------------------------------------------------------------------------------------


@needs_cifar
@pytest.mark.slow
def test_cifar10_resnet18_oblivious_pgd_is_blunted_by_both_defenses():
    """First 32 CIFAR-10 test images, resnet18-standard, PGD eps 8/255 x 10 on the bare model."""
    torchattacks = pytest.importorskip("torchattacks")
    data = np.load(DATA / "cifar10_test_head.npz")
    x = torch.from_numpy(data["x"][:32]).permute(0, 3, 1, 2).float().div(255).contiguous()
    y = torch.from_numpy(data["y"][:32]).long()
    model = registry.build("models", "resnet18-standard").eval()
    torch.manual_seed(0)
    adv = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)(x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6

    def accuracy(images, defense=None):
        with torch.no_grad():
            if defense is not None:
                images = defense(images)
            return (model(images).argmax(1) == y).float().mean().item()

    acc = {"none": (accuracy(x), accuracy(adv))}
    for name, defense in [("tvm", TVM()), ("me-net", MENet()), ("me-net-softimpute", MENet(method="softimpute"))]:
        torch.manual_seed(1)
        acc[name] = (accuracy(x, defense), accuracy(adv, defense))
    print("clean / oblivious-PGD accuracy:", acc)
    assert acc["none"][0] >= 0.9 and acc["none"][1] <= 1 / 32
    assert acc["tvm"][1] >= acc["none"][1] + 0.2
    assert acc["me-net-softimpute"][1] >= acc["none"][1] + 0.1
    # USVT at p = 0.5 keeps the observed pixels doubled: a classifier not trained on ME-Net
    # reconstructions is near chance, clean or attacked (ME-Net trains its classifier on them).
    assert acc["me-net"][1] >= acc["none"][1]
    assert acc["me-net"][0] < 0.5


def test_tvm_border_released_divides_a_dropped_border_pixel_by_four_as_guo_et_al_solver():
    image = torch.ones(1, 1, 6, 6)
    keep = torch.ones_like(image, dtype=torch.bool)
    keep[0, 0, 0, 0] = False  # a dropped corner pixel: 2 neighbours
    keep[0, 0, 3, 3] = False  # a dropped interior pixel: 4 neighbours
    observed = image * keep
    exact = tv_bregman(observed, keep, fidelity=1 / 0.03, max_iter=50, tol=0)
    released = tv_bregman(observed, keep, fidelity=1 / 0.03, max_iter=50, tol=0, border="released")
    assert exact[0, 0, 0, 0].item() == pytest.approx(1, abs=0.05), "the exact solver averages the 2 neighbours"
    assert released[0, 0, 0, 0].item() < 0.5, "the released solver divides their sum by 4, darkening the corner"
    assert exact[0, 0, 3, 3].item() == pytest.approx(released[0, 0, 3, 3].item(), abs=1e-3), "interior is unchanged"
    assert str(registry.build("defenses", "tvm:border=released").border) == "released"
    with pytest.raises(ValueError, match="border"):
        TVM(border="reflect")
