"""PGD's robench-native loop (early stop, bf16 autocast, channels_last) against torchattacks on real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchattacks

from robench import registry
from robench.defense import Defense
from robench.target import EOT, Pipeline
from robench.threat import ThreatModel
from tests.conftest import DATA, needs_cifar

pytestmark = needs_cifar
LINF8 = ThreatModel("Linf", 8 / 255)
L2 = ThreatModel("L2", 0.5)
SEED = 7


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run on one thread: these small batches gain nothing from more, and on a shared machine
    oversubscribed OpenMP threads made them about 40 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar32():
    arrays = np.load(DATA / "cifar10_test_head.npz")
    x = torch.from_numpy(arrays["x"][:32]).permute(0, 3, 1, 2).float().div(255).contiguous()
    return x, torch.from_numpy(arrays["y"][:32])


def _torchattacks(model, x, y, threat, steps, seed=SEED, targets=None):
    """torchattacks' PGD / PGDL2 with robench's default step sizes, seeded as robench seeds (None: not reseeded)."""
    if seed is not None:
        torch.manual_seed(seed)
    if threat.norm == "Linf":
        attack = torchattacks.PGD(model, eps=threat.eps, alpha=2 / 255, steps=steps)
    else:
        attack = torchattacks.PGDL2(model, eps=threat.eps, alpha=threat.eps / 5, steps=steps)
    if targets is not None:
        attack.set_mode_targeted_by_function(lambda inputs, labels: targets, quiet=True)
    return attack(x, y)


@torch.no_grad()
def _wrong(model, x_adv, y):
    return model(x_adv).argmax(1) != y


@pytest.mark.parametrize("threat", [LINF8, L2], ids=str)
def test_early_stop_is_at_least_as_strong_and_equal_where_never_broken(cifar32, shared_data, threat):
    model = registry.build("models", "convex-cifar-small").eval()  # robust: some examples are never broken
    x, y = cifar32
    ours = registry.build("attacks", "pgd:steps=10,early_stop=true")(model, x, y, threat, seed=SEED)
    reference = _torchattacks(model, x, y, threat, steps=10)
    threat.check(ours, x)
    ours_broken, reference_broken = _wrong(model, ours, y), _wrong(model, reference, y)
    assert (ours_broken | ~reference_broken).all(), "every example torchattacks breaks is broken"
    assert 0 < (~ours_broken).sum() < len(y), "the model keeps some examples and loses others"
    assert torch.allclose(ours[~ours_broken], reference[~ours_broken], atol=1e-6)


def test_early_stop_returns_the_first_misclassified_iterate(cifar32, shared_data):
    model = registry.build("models", "convex-cifar-small").eval()
    x, y = cifar32
    steps = 6
    ours = registry.build("attacks", f"pgd:steps={steps},early_stop=true")(model, x, y, LINF8, seed=SEED)
    # torchattacks with t steps and the same seed is the first t steps of the same trajectory.
    prefixes = [_torchattacks(model, x, y, LINF8, steps=t) for t in range(steps + 1)]
    first_broken = torch.stack([_wrong(model, p, y) for p in prefixes]).float().argmax(0)
    ever_broken = torch.stack([_wrong(model, p, y) for p in prefixes]).any(0)
    assert ever_broken.sum() > 3
    for i in ever_broken.nonzero().flatten().tolist():
        assert torch.allclose(ours[i], prefixes[first_broken[i]][i], atol=1e-6), f"example {i}"
    assert _wrong(model, ours[ever_broken], y[ever_broken]).all()
    changed = (ours - prefixes[-1]).flatten(1).abs().amax(1) > 1e-6
    assert changed.any() and _wrong(model, ours[changed], y[changed]).all()


class _Counting(torch.nn.Module):
    """Records the batch size of every forward pass that computes a gradient."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        if x.requires_grad:
            self.sizes.append(len(x))
        return self.model(x)


def test_targeted_early_stop_stops_when_the_target_is_reached(cifar32, shared_data):
    model = _Counting(registry.build("models", "convex-cifar-small").eval())
    x, y = cifar32
    steps = 10
    ours = registry.build("attacks", f"pgd:steps={steps},targeted=true,early_stop=true")(model, x, y, LINF8, seed=SEED)
    torch.manual_seed(SEED)  # PGD draws the targets first, then the random start
    targets = (y + torch.randint(1, 10, y.shape)) % 10
    reference = _torchattacks(model.model, x, y, LINF8, steps=steps, seed=None, targets=targets)
    with torch.no_grad():
        ours_hit, reference_hit = (model.model(a).argmax(1) == targets for a in (ours, reference))
    assert (ours_hit | ~reference_hit).all() and ours_hit.any()
    assert torch.allclose(ours[~ours_hit], reference[~ours_hit], atol=1e-6)
    assert len(model.sizes) <= steps and model.sizes[0] == len(x)
    assert model.sizes[-1] < len(x) and sum(model.sizes) < steps * len(x), "examples at their target leave the batch"
    LINF8.check(ours, x)


def test_bf16_autocast_stays_in_the_threat_model_and_near_float32_accuracy(cifar32, shared_data):
    model = registry.build("models", "resnet20-akamaster").eval()
    x, y = cifar32
    threat = ThreatModel("Linf", 1 / 255)  # small enough that PGD leaves some examples robust
    accuracy = {}
    for autocast in ("null", "bf16"):
        attack = registry.build("attacks", f"pgd:steps=3,early_stop=true,autocast={autocast}")
        x_adv = attack(model, x, y, threat, seed=SEED)
        assert x_adv.dtype == torch.float32 and x_adv.is_contiguous()
        threat.check(x_adv, x)
        accuracy[autocast] = 1 - _wrong(model, x_adv, y).float().mean().item()
    assert 0 < accuracy["null"] < 1
    assert abs(accuracy["bf16"] - accuracy["null"]) <= 2 / len(y) + 1e-9, accuracy


@pytest.mark.parametrize("extra", ["", ",early_stop=true"])
def test_channels_last_gives_the_default_loop_result(cifar32, shared_data, extra):
    model = registry.build("models", "convex-cifar-small").eval()
    x, y = cifar32
    default = registry.build("attacks", f"pgd:steps=10{extra}")(model, x, y, LINF8, seed=SEED)
    last = registry.build("attacks", f"pgd:steps=10,channels_last=true{extra}")(model, x, y, LINF8, seed=SEED)
    assert last.is_contiguous()
    assert torch.allclose(last, default, atol=1e-6)


class _Jitter(Defense):
    """Stochastic and differentiable: multiplies by a random gain per image."""

    stochastic = True

    def purify(self, x):
        return (x * (0.9 + 0.2 * torch.rand(len(x), 1, 1, 1))).clamp(0, 1)


def test_early_stop_runs_through_a_stochastic_eot_view(cifar32, shared_data):
    model = registry.build("models", "convex-cifar-small").eval()
    x, y = cifar32
    view = EOT(Pipeline(model, _Jitter()), draws=3)
    x_adv = registry.build("attacks", "pgd:steps=4,early_stop=true")(view, x[:8], y[:8], LINF8, seed=SEED)
    LINF8.check(x_adv, x[:8])


def test_invalid_speed_options_are_refused():
    with pytest.raises(ValueError, match="autocast"):
        registry.build("attacks", "pgd:autocast=fp8")
    with pytest.raises(ValueError, match="channels_last"):
        registry.build("attacks", "pgd:channels_last=true")(
            torch.nn.Linear(4, 2), torch.rand(3, 4), torch.zeros(3, dtype=torch.long), LINF8)
