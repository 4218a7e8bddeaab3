"""robench's AutoAttack components (APGD runs side by side, FAB-T, Linf Square) against the official code (``pyautoattack``)."""

from __future__ import annotations

import pytest
import torch
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

from robench import registry
from robench.attacks import apgd as apgd_module
from robench.attacks.autoattack import AutoAttack
from robench.attacks.fab import fab_targeted
from robench.attacks.square import square_linf
from robench.threat import ThreatModel
from tests.conftest import CountingImages, needs_cifar

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair():
    """A tiny 4-class model and synthetic images, some of which each attack breaks."""
    torch.manual_seed(0)
    model = registry.build("models", "tiny:size=8,num_classes=4").eval()
    data = registry.build("datasets", "synthetic:image_size=8,num_classes=4,size=12").load(n=12)
    return model, data.x, data.y


def _broken(model, x_adv, x, y, threat):
    with torch.no_grad():
        return (model(x_adv).argmax(1) != y) & (threat.violation(x_adv, x) <= 1e-6)


@pytest.mark.parametrize("eps", [3 / 255, 4 / 255])  # the tiny model: examples broken in several runs
def test_apgd_runs_side_by_side_give_the_points_of_runs_one_at_a_time(eps, monkeypatch):
    model, x, y = _pair()
    threat, starts = ThreatModel("Linf", eps), []
    draw = apgd_module._Runner._start
    monkeypatch.setattr(apgd_module._Runner, "_start", lambda self, v: starts.append(len(v)) or draw(self, v))
    side_by_side = apgd_module.apgd_targeted(model, x, y, threat, n_targets=3, n_iter=20, restarts=2, seed=0)
    runs_drawn = len(starts)
    monkeypatch.setattr(apgd_module, "MAX_ELEMENTS", 1)  # one run per batch: the official order
    in_turn = apgd_module.apgd_targeted(model, x, y, threat, n_targets=3, n_iter=20, restarts=2, seed=0)
    assert runs_drawn > 3 * 2, "the first group drew all 6 runs; later ones were drawn again after a run broke an example"
    assert 0 < (model(in_turn).argmax(1) != y).sum() < len(y)
    assert torch.equal(side_by_side, in_turn), "each row follows its own run: the same first successful iterates"


@pytest.mark.parametrize("budget", [1, 2])
def test_apgd_runs_side_by_side_spend_at_most_their_budget_of_gradient_steps(budget, monkeypatch):
    model, x, y = _pair()
    monkeypatch.setattr(apgd_module, "RECOMPUTE_BUDGET", budget)
    counting = CountingImages(model)
    with torch.no_grad():
        attacked = int((model(x).argmax(1) == y).sum())
    # at 2/255 a run breaks an example late: unbounded, the runs drawn again spend more than the official count
    apgd_module.apgd_targeted(counting, x, y, ThreatModel("Linf", 2 / 255), n_targets=3, n_iter=20, restarts=3, seed=0)
    official = 3 * 3 * attacked * (20 + 1)  # every run, every example, the start and 20 steps
    assert counting.images - len(x) <= budget * official  # less the clean forward pass


@pytest.mark.parametrize("threat", [ThreatModel("Linf", 4 / 255), ThreatModel("L2", 0.2)])
@pytest.mark.parametrize("one_at_a_time", [False, True])
def test_fab_targeted_breaks_the_examples_the_official_fab_t_breaks(threat, one_at_a_time, monkeypatch):
    if one_at_a_time:
        monkeypatch.setattr(apgd_module, "MAX_ELEMENTS", 1)
    model, x, y = _pair()
    official = FABAttack_PT(model, norm=threat.norm, n_restarts=1, n_iter=20, eps=threat.eps, targeted=True,
                            n_target_classes=3, device="cpu")
    reference = _broken(model, official.perturb(x, y), x, y, threat)
    ours = _broken(model, fab_targeted(model, x, y, threat, n_targets=3, n_iter=20), x, y, threat)
    assert 0 < reference.sum() < len(y), "some examples broken, some not"
    assert torch.equal(ours, reference)


def test_fab_targeted_drops_an_example_at_its_first_iterate_within_eps():
    model, x, y = _pair()
    counting, threat = CountingImages(model), ThreatModel("Linf", 4 / 255)
    fab_targeted(counting, x, y, threat, n_targets=3, n_iter=20)
    # without early stop: 2 passes per step (the difference's gradient, the label check) for 3 targets x 12 images
    assert counting.images < 0.8 * 2 * 20 * 3 * len(x)


def test_fab_targeted_keeps_the_first_target_when_several_break_an_example_in_one_step():
    torch.manual_seed(0)
    _, x, y = _pair()
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 4)).eval()
    with torch.no_grad():
        y = linear(x).argmax(1)  # every example clean-correct
    # on a linear model the first FAB step crosses each target's boundary: all 3 targets settle at once
    together = fab_targeted(linear, x, y, ThreatModel("Linf", 1.0), n_targets=3, n_iter=5)
    first_target = fab_targeted(linear, x, y, ThreatModel("Linf", 1.0), n_targets=1, n_iter=5)
    assert _broken(linear, together, x, y, ThreatModel("Linf", 1.0)).all()
    assert torch.allclose(together, first_target, atol=1e-6), "the point of the lowest target rank, whole"


def test_fab_targeted_refuses_l1():
    model, x, y = _pair()
    with pytest.raises(ValueError, match="Linf"):
        fab_targeted(model, x, y, ThreatModel("L1", 1.0))


@pytest.mark.parametrize("eps", [0.03, 0.3])  # some fooled (the active batch shrinks); all fooled (early exit)
def test_square_linf_returns_the_official_points_bit_for_bit(eps):
    model, x, y = _pair()
    official = SquareAttack(model, p_init=0.8, n_queries=150, eps=eps, norm="Linf", n_restarts=1, seed=7,
                            device="cpu", resc_schedule=False)
    reference = official.perturb(x, y)
    ours = square_linf(model, x, y, eps, n_queries=150, seed=7)
    assert (model(reference).argmax(1) != y).any()
    assert torch.equal(ours, reference)


def _quick_official(monkeypatch, fab_iter: int, queries: int):
    """Shorten the official objects' FAB and Square for both engines alike (both read their parameters there)."""
    build = AutoAttack._official

    def quick(self, *args, **kwargs):
        official = build(self, *args, **kwargs)
        official.fab.n_iter, official.square.n_queries = fab_iter, queries
        return official

    monkeypatch.setattr(AutoAttack, "_official", quick)


@needs_cifar
@pytest.mark.parametrize("model_name, dataset, eps", [("convex-cifar-small", "cifar10", 8 / 255),
                                                      ("mnist-fast-at", "mnist", 0.3)])
def test_autoattack_engines_agree_through_fab_t_and_square(model_name, dataset, eps, shared_data, monkeypatch):
    _quick_official(monkeypatch, fab_iter=20, queries=100)
    model = registry.build("models", model_name).eval()
    examples = registry.build("datasets", dataset).load(split="test", n=12)
    x, y, threat = examples.x, examples.y, ThreatModel("Linf", eps)
    robust = {}
    for engine in ("official", "robench"):
        attack = registry.build("attacks", f"autoattack:n_iter=10,engine={engine}")
        x_adv = attack(model, x, y, threat, seed=5)
        with torch.no_grad():
            robust[engine] = model(x_adv).argmax(1) == y
    assert torch.equal(robust["robench"], robust["official"])
    assert robust["official"].any(), "a robust model keeps some examples through all four components"
