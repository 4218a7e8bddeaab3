"""The momentum transfer-attack family: bit-identical to torchattacks where configured alike,
faithful to the original papers where robench deviates, inside the threat model, and transferable."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from robench import registry
from robench.attack import AttackNotApplicable
from robench.attacks._momentum import MID_GREY, diverse_input, enlarge_and_pad, smooth
from robench.attacks.dim import DIM
from robench.attacks.mifgsm import MIFGSM
from robench.attacks.sinitidim import SINITIDIM, scale_copies
from robench.attacks.tidim import TIDIM
from robench.attacks.variance_tuning import VMIFGSM, VNIFGSM
from robench.defense import DefenseInputError, check_images
from robench.threat import ThreatModel
from tests.conftest import DATA, needs_cifar

NAMES = ["mifgsm", "vmifgsm", "vnifgsm", "dim", "tidim", "sinitidim"]
EPS8 = ThreatModel("Linf", 8 / 255)
EPS16 = ThreatModel("Linf", 16 / 255)  # RDP's transfer budget


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small CPU batches run fastest single-threaded, and CI shares its cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    return registry.build("models", name).eval()


@lru_cache(maxsize=None)
def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(DATA / "cifar10_test_head.npz")
    x = torch.from_numpy(data["x"][:n]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(data["y"][:n]).long()


@pytest.fixture
def source(shared_data) -> nn.Module:
    return _model("resnet20-akamaster")


@pytest.fixture
def target(shared_data) -> nn.Module:
    return _model("resnet18-standard")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


# (a) configured like torchattacks -> bit-identical adversarial examples -------------------------

EQUAL_TO_TORCHATTACKS = {
    "mifgsm": (dict(step_size=2 / 255), lambda m, eps: torchattacks.MIFGSM(m, eps=eps, alpha=2 / 255, steps=10,
                                                                             decay=1.0)),
    "vmifgsm": (dict(step_size=2 / 255, steps=3, N=5, beta=1.5, clip_queries=False),
                lambda m, eps: torchattacks.VMIFGSM(m, eps=eps, alpha=2 / 255, steps=3, decay=1.0, N=5, beta=1.5)),
    "vnifgsm": (dict(step_size=2 / 255, steps=3, N=5, beta=1.5, clip_queries=False),
                lambda m, eps: torchattacks.VNIFGSM(m, eps=eps, alpha=2 / 255, steps=3, decay=1.0, N=5, beta=1.5)),
    # Without diverse inputs TI-DIM is torchattacks' TI-FGSM with momentum: same kernel, same place.
    "tidim": (dict(step_size=2 / 255, diversity_prob=0.0),
              lambda m, eps: torchattacks.TIFGSM(m, eps=eps, alpha=2 / 255, steps=10, decay=1.0, diversity_prob=0.0)),
}


@needs_cifar
@pytest.mark.parametrize("name", list(EQUAL_TO_TORCHATTACKS))
def test_equal_settings_give_the_same_examples_as_torchattacks(source, name):
    x, y = _images(16)
    options, reference = EQUAL_TO_TORCHATTACKS[name]
    ours = registry.load("attacks", name)(**options)(source, x, y, EPS8, seed=3)
    torch.manual_seed(3)
    theirs = reference(source, EPS8.eps)(x, y)
    assert not torch.equal(ours, x)
    assert torch.equal(ours, theirs)


class _RefusesNonImages(nn.Module):
    """A model that, like a purifier, refuses inputs outside [0, 1] and records the range it was queried at."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.lowest, self.highest = model, 1.0, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lowest, self.highest = min(self.lowest, x.min().item()), max(self.highest, x.max().item())
        check_images(x, who="a defended pipeline")
        return self.model(x)


@pytest.mark.parametrize("name", ["vmifgsm", "vnifgsm", "sinitidim"])
def test_queries_besides_the_iterates_stay_images_unless_clip_queries_is_off(name):
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16) * 0.02, torch.randint(0, 10, (8,))  # near black: the neighbours leave [0, 1]
    model = _RefusesNonImages(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))).eval()
    options = dict(steps=2, N=4) if name != "sinitidim" else dict(steps=2, scales=2)
    x_adv = registry.load("attacks", name)(**options)(model, x, y, EPS8, seed=0)
    EPS8.check(x_adv, x)
    assert model.lowest >= 0 and model.highest <= 1
    with pytest.raises(DefenseInputError, match=r"\[0, 1\]"):
        registry.load("attacks", name)(**options, clip_queries=False)(model, x, y, EPS8, seed=0)


def test_one_step_with_the_default_step_size_is_fgsm():
    """``step_size=None`` means eps/steps: one step of size eps, i.e. FGSM."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    ours = MIFGSM(steps=1)(model, x, y, EPS8)
    assert torch.allclose(ours, torchattacks.FGSM(model, eps=EPS8.eps)(x, y), atol=1e-6)


# (b) where robench deviates from torchattacks, the deviation is real ---------------------------

def test_diverse_input_enlarges_pads_grey_once_per_batch_and_resizes_back():
    x = 0.6 + 0.4 * torch.rand(4, 3, 32, 32)  # no pixel is mid-grey, so the padding is findable
    sizes = set()
    for seed in range(30):
        torch.manual_seed(seed)
        big = enlarge_and_pad(x, 330 / 299)
        assert big.shape == (4, 3, 35, 35), "int(32 * 330/299) = 35: DI enlarges"
        content = big != MID_GREY
        assert (content == content[:1, :1]).all(), "one size and offset for the whole batch"
        rows, cols = content[0, 0].any(dim=1).nonzero(), content[0, 0].any(dim=0).nonzero()
        top, left, size = rows.min().item(), cols.min().item(), len(rows)
        assert len(cols) == size and 32 <= size < 35
        expected = F.interpolate(x, size=(size, size), mode="nearest")
        assert torch.equal(big[..., top:top + size, left:left + size], expected)
        sizes.add(size)
    assert sizes == {32, 33, 34}
    assert diverse_input(x, resize_rate=330 / 299, p=1.0).shape == x.shape, "resized back for fixed-size models"
    assert diverse_input(x, resize_rate=330 / 299, p=0.0) is x
    # torchattacks instead shrinks the image into a black frame of the original size.
    torch.manual_seed(0)
    shrunk = torchattacks.DIFGSM(nn.Linear(1, 1), diversity_prob=1.0).input_diversity(x)
    assert shrunk.shape == x.shape and 28 <= (shrunk[0, 0] != 0).any(dim=1).sum() < 32


def test_ti_kernel_is_the_normalised_gaussian_of_the_stated_size_applied_per_channel():
    t = np.linspace(-3, 3, 15)
    gauss = np.outer(scipy.stats.norm.pdf(t), scipy.stats.norm.pdf(t))
    kernel = TIDIM().kernel
    assert kernel.shape == (15, 15) and abs(kernel.sum().item() - 1) < 1e-6
    assert torch.allclose(kernel, torch.tensor(gauss / gauss.sum(), dtype=torch.float32), rtol=1e-6, atol=0)
    assert torch.equal(kernel, torchattacks.TIFGSM(nn.Linear(1, 1)).stacked_kernel[0, 0])
    assert SINITIDIM().kernel.shape == (7, 7), "SI-NI/VT repositories: gkern(7, 3)"
    impulse = torch.zeros(1, 3, 31, 31)
    impulse[0, :, 15, 15] = torch.tensor([1.0, 2.0, -1.0])
    response = smooth(impulse, kernel)
    for c, weight in enumerate([1.0, 2.0, -1.0]):
        assert torch.allclose(response[0, c, 8:23, 8:23], weight * kernel)
    assert response[..., :8, :].abs().max() == 0


def test_scale_copies_shrink_towards_mid_grey_not_black():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    copies = scale_copies(x, 5).chunk(5)
    assert torch.equal(copies[0], x)
    for i, copy in enumerate(copies):
        assert torch.allclose(copy, 0.5 + (x - 0.5) / 2**i)
        assert 0 <= copy.min() and copy.max() <= 1
    grey = torch.full_like(x, 0.5)
    assert torch.equal(scale_copies(grey, 5), grey.repeat(5, 1, 1, 1)), "grey is the fixed point"
    assert (copies[4] - 0.5).abs().max() <= 0.5 / 16
    assert (x / 16).max() <= 1 / 16, "torchattacks' copies x/2^i head for black instead"


def test_defaults_are_the_original_papers():
    for cls in (MIFGSM, VMIFGSM, VNIFGSM, DIM, TIDIM, SINITIDIM):
        attack = cls()
        assert attack.kind == "transfer" and attack.norms == ("Linf",)
        assert attack.steps == 10 and attack.decay == 1.0 and attack.step_size is None
        assert attack.label_mode == "true"
    assert VMIFGSM().N == 20 and VMIFGSM().beta == 1.5 and torchattacks.VMIFGSM(nn.Linear(1, 1)).N == 5
    assert (DIM().diversity_prob, DIM().resize_rate) == (0.7, 330 / 299)
    assert (TIDIM().kernel_size, TIDIM().diversity_prob) == (15, 0.7)
    sini = SINITIDIM()
    assert (sini.scales, sini.kernel_size, sini.diversity_prob, sini.resize_rate) == (5, 7, 0.5, 331 / 299)
    assert VNIFGSM.nesterov and SINITIDIM.nesterov and not VMIFGSM.nesterov and not TIDIM.nesterov


@pytest.mark.parametrize("options", [dict(steps=0), dict(step_size=0), dict(decay=-1), dict(label_mode="gt")])
def test_bad_hyperparameters_are_refused(options):
    with pytest.raises(ValueError):
        SINITIDIM(**options)


def test_l2_is_not_applicable():
    with pytest.raises(AttackNotApplicable):
        MIFGSM()(nn.Linear(1, 1), torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), ThreatModel("L2", 0.5))


# (c) inside the Linf ball and [0, 1], and harmful to the attacked model ------------------------

CHEAP = {"vmifgsm": dict(N=5, steps=5), "vnifgsm": dict(N=5, steps=5), "sinitidim": dict(steps=5)}


@needs_cifar
@pytest.mark.parametrize("name", NAMES)
def test_attack_stays_in_the_threat_model_and_lowers_accuracy(source, name):
    x, y = _images(16)
    attack = registry.load("attacks", name)(**CHEAP.get(name, {}))
    torch.manual_seed(0)
    x_adv = attack.run(source, x.clone(), y, EPS8)  # the algorithm's own output, before the base projects
    EPS8.check(x_adv, x)
    assert 0 <= x_adv.min() and x_adv.max() <= 1
    clean, attacked = accuracy(source, x, y), accuracy(source, x_adv, y)
    print(f"\n{name} white-box on resnet20-akamaster, eps 8/255, 16 images: {clean:.3f} -> {attacked:.3f}")
    assert attacked <= clean - 0.5


# (d) crafted on resnet20-akamaster, they transfer to resnet18-standard -------------------------

@needs_cifar
@pytest.mark.parametrize("name", [n if n in ("mifgsm", "dim", "tidim") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in NAMES])
def test_examples_crafted_on_resnet20_transfer_to_resnet18(source, target, name):
    x, y = _images(32)
    x_adv = registry.load("attacks", name)()(source, x, y, EPS16, seed=0)
    clean, transferred = accuracy(target, x, y), accuracy(target, x_adv, y)
    print(f"\n{name} resnet20-akamaster -> resnet18-standard, eps 16/255, 32 images: {clean:.3f} -> {transferred:.3f}")
    assert transferred <= clean - 0.25


# (e) label_mode="pred" ascends the loss of the model's own clean prediction --------------------

@needs_cifar
@pytest.mark.parametrize("spec", ["mifgsm:steps=3", "sinitidim:steps=2"])
def test_pred_label_mode_uses_the_models_prediction(source, spec):
    x, _ = _images(8)
    with torch.no_grad():
        pred = source(x).argmax(dim=1)
    wrong = (pred + 1) % 10
    by_prediction = registry.build("attacks", f"{spec},label_mode=pred")(source, x, wrong, EPS8, seed=1)
    given = registry.build("attacks", spec)
    assert torch.equal(by_prediction, given(source, x, pred, EPS8, seed=1))
    assert not torch.equal(by_prediction, given(source, x, wrong, EPS8, seed=1))
