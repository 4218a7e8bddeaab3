"""Attacks against reference implementations and papers' facts, on real models and data."""

from __future__ import annotations

from functools import partial

import numpy as np
import pyautoattack
import pytest
import torch
import torchattacks
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

from robench import registry
from robench.attack import Attack
from robench.attacks.apgd import apgd, apgd_targeted
from robench.attacks.autoattack import ENGINES
from robench.cell import Cell
from robench.defense import Defense
from robench.masks import MaskedDefense
from robench.resolve import ConfigError, Resolver
from robench.runner import run_grid
from robench.store import Store
from robench.target import EOT, Pipeline, adaptive_view
from robench.threat import ThreatModel
from tests.conftest import CountingImages, DATA, needs_cifar

CPU = torch.device("cpu")
LINF8 = ThreatModel("Linf", 8 / 255)
LINF4 = ThreatModel("Linf", 4 / 255)


@pytest.fixture(scope="module")
def cifar16():
    arrays = np.load(DATA / "cifar10_test_head.npz")
    x = torch.from_numpy(arrays["x"][:16]).permute(0, 3, 1, 2).float().div(255).contiguous()
    return x, torch.from_numpy(arrays["y"][:16])


def _model(spec, monkeypatch):
    monkeypatch.setenv("ROBENCH_DATA", str(DATA))
    monkeypatch.setenv("ROBENCH_OFFLINE", "1")
    return registry.build("models", spec).eval()


@needs_cifar
def test_pgd_equals_torchattacks_pgd_with_the_same_seed(cifar16, monkeypatch):
    model = _model("resnet20-akamaster", monkeypatch)
    x, y = cifar16
    ours = registry.build("attacks", "pgd:steps=5")(model, x, y, LINF8, seed=3)
    torch.manual_seed(3)
    reference = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=5)(x, y)
    assert torch.equal(model(ours).argmax(1), model(reference).argmax(1))
    assert torch.allclose(ours, reference, atol=1e-6)


@needs_cifar
def test_bpda_eot_with_one_draw_equals_torchattacks_pgd(cifar16, monkeypatch):
    model = _model("resnet20-akamaster", monkeypatch)
    x, y = cifar16
    ours = registry.build("attacks", "bpda-eot:steps=5")(model, x, y, LINF8, seed=4)
    torch.manual_seed(4)
    reference = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=5)(x, y)
    assert torch.allclose(ours, reference, atol=1e-6)


class Jitter(Defense):
    """Stochastic and differentiable: multiplies by a random gain per image."""

    stochastic = True

    def purify(self, x):
        return (x * (0.8 + 0.4 * torch.rand(len(x), 1, 1, 1))).clamp(0, 1)


def test_bpda_eot_follows_the_mean_of_per_draw_gradients():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(2, 3, 2, 2) * 0.5 + 0.25, torch.tensor([0, 1])
    attack = registry.build("attacks", "bpda-eot:steps=1,random_start=false,step_size=0.001")
    view = adaptive_view(model, Jitter(), eot_draws=6)
    torch.manual_seed(1)
    stepped = attack(view, x, y, ThreatModel("L2", 0.5), seed=None)
    torch.manual_seed(1)
    x_rep = x.repeat(6, 1, 1, 1).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(Pipeline(model, Jitter())(x_rep), y.repeat(6), reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x_rep)
    mean_grad = grad.view(6, 2, 3, 2, 2).mean(0)
    direction = mean_grad / mean_grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(stepped, x + 0.001 * direction, atol=1e-6)


def _official(model, x, y, seed_source: int, attacks: list[str] | None):
    torch.manual_seed(seed_source)
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    official = pyautoattack.AutoAttack(model, norm="Linf", eps=8 / 255, version="standard", seed=seed, device="cpu")
    if attacks is not None:
        official.attacks_to_run = attacks
    return official.run_standard_evaluation(x, y, batch_size=len(x))[0]


def _robust_model_and_correct_images(cifar16, monkeypatch):
    model = _model("convex-cifar-small", monkeypatch)
    x, y = cifar16
    keep = model(x).argmax(1) == y
    return model, x[keep], y[keep]


@needs_cifar
def test_apgd_ce_matches_the_official_code(cifar16, monkeypatch):
    model, x, y = _robust_model_and_correct_images(cifar16, monkeypatch)
    ours = registry.build("attacks", "apgd-ce")(model, x, y, LINF8, seed=5)
    reference = _official(model, x, y, 5, ["apgd-ce"])
    assert torch.equal(model(ours).argmax(1) == y, model(reference).argmax(1) == y)
    assert 0 < (model(ours).argmax(1) == y).float().mean() < 1, "a robust model keeps some, loses some at 8/255"


def _apgd_pair():
    """A tiny model and synthetic images, some of which APGD breaks."""
    torch.manual_seed(0)
    model = registry.build("models", "tiny:size=8,num_classes=4").eval()
    data = registry.build("datasets", "synthetic:image_size=8,num_classes=4,size=12").load(n=12)
    return model, data.x, data.y


@pytest.mark.parametrize("norm, eps", [("Linf", 4 / 255), ("L2", 0.2)])  # the tiny model: some broken, some not
@pytest.mark.parametrize("loss, eot_iter", [("ce", 1), ("dlr", 2), ("targeted", 1)])
def test_apgd_without_early_stop_is_the_official_apgd_bit_for_bit(norm, eps, loss, eot_iter):
    model, x, y = _apgd_pair()
    threat = ThreatModel(norm, eps)
    if loss == "targeted":
        official = APGDAttack_targeted(model, n_iter=10, norm=norm, eps=eps, seed=3, device="cpu", n_target_classes=3)
        ours = apgd_targeted(model, x, y, threat, n_targets=3, n_iter=10, seed=3, early_stop=False)
    else:
        official = APGDAttack(model, n_iter=10, norm=norm, eps=eps, seed=3, loss=loss, eot_iter=eot_iter, device="cpu")
        ours = apgd(model, x, y, threat, loss=loss, n_iter=10, eot_iter=eot_iter, seed=3, early_stop=False)
    reference = official.perturb(x, y)
    assert 0 < (model(reference).argmax(1) != y).sum() < len(y), "some examples broken, some not"
    assert torch.equal(ours, reference), "same ops in the same order: the same floats"


@pytest.mark.parametrize("targeted", [False, True])
def test_apgd_early_stop_drops_broken_examples_and_keeps_every_outcome(targeted):
    model, x, y = _apgd_pair()
    counting = CountingImages(model)
    run = partial(apgd_targeted, n_targets=3) if targeted else apgd
    outcomes, images = [], []
    for early_stop in (False, True):
        counting.images = 0
        x_adv = run(counting, x, y, LINF4, n_iter=20, seed=1, early_stop=early_stop)
        images.append(counting.images)
        outcomes.append(model(x_adv).argmax(1) != y)
        assert (LINF4.violation(x_adv, x) <= 1e-6).all()
    assert torch.equal(outcomes[0], outcomes[1])
    broken = outcomes[0].float().mean().item()
    assert 0 < broken < 1
    assert images[1] < 0.9 * images[0], "broken examples stop costing forward passes"


def test_autoattack_robench_engine_without_early_stop_returns_the_official_points():
    model, x, y = _apgd_pair()
    threat = ThreatModel("Linf", 4 / 255)
    points = {}
    for options in ("engine=official", "engine=robench,early_stop=false", "engine=robench"):
        attack = registry.build("attacks", f"autoattack:n_iter=10,{options}")
        attack.components = ("apgd-ce", "apgd-t")
        points[options] = attack(model, x, y, threat, seed=2)
    assert torch.equal(points["engine=robench,early_stop=false"], points["engine=official"])
    broken = {k: model(v).argmax(1) != y for k, v in points.items()}
    assert torch.equal(broken["engine=robench"], broken["engine=official"]) and broken["engine=official"].any()


def test_autoattack_rand_averages_20_draws_per_step_and_keeps_every_example_by_default():
    model, x, y = _apgd_pair()
    counting = CountingImages(Pipeline(model, Jitter()))
    attack = registry.build("attacks", "autoattack:variant=rand,n_iter=5")
    attack.components = ("apgd-ce",)
    assert not attack.early_stop and registry.build("attacks", "autoattack").early_stop
    x_adv = attack(counting, x, y, LINF4, seed=0)
    assert (LINF4.violation(x_adv, x) <= 1e-6).all()
    # without early stop, each attacked image costs 20 draws at the start and at each of 5 steps
    assert counting.images >= 20 * (5 + 1) * len(x) // 2


def test_autoattack_n_iter_sets_the_official_checkpoint_schedule():
    attack = registry.build("attacks", "autoattack:engine=official,n_iter=100")
    model = registry.build("models", "tiny:size=8,num_classes=4").eval()
    official = attack._official(model, torch.zeros(1, 3, 8, 8), LINF8, seed=0)
    constructed = APGDAttack(model, n_iter=100, eps=8 / 255)  # what the official constructor derives
    assert (official.apgd.n_iter_2, official.apgd.n_iter_min, official.apgd.size_decr) == (
        constructed.n_iter_2, constructed.n_iter_min, constructed.size_decr)
    with pytest.raises(ValueError, match="engine"):
        registry.build("attacks", "autoattack:engine=fast")


ENGINE_MODELS = [("resnet18-standard", "cifar10", 8 / 255), ("convex-cifar-small", "cifar10", 8 / 255),
                 ("mnist-fast-at", "mnist", 0.3)]


def _engines_agree(spec, model_name, dataset, eps, n, monkeypatch, components=None):
    """Run ``spec`` with both engines and the same seed; per-example outcomes must agree."""
    model = _model(model_name, monkeypatch)
    examples = registry.build("datasets", dataset).load(split="test", n=n)
    x, y, threat = examples.x, examples.y, ThreatModel("Linf", eps)
    robust = {}
    for engine in ENGINES:
        attack = registry.build("attacks", f"{spec}engine={engine}")
        attack.components = components
        x_adv = attack(model, x, y, threat, seed=5)
        with torch.no_grad():
            robust[engine] = model(x_adv).argmax(1) == y
    # float rounding of batch-size-dependent kernels may only flip an example on the decision boundary
    assert torch.equal(robust["robench"], robust["official"]), f"robust: {robust}"
    return robust["official"]


@needs_cifar
@pytest.mark.parametrize("model_name, dataset, eps", ENGINE_MODELS)
def test_autoattack_engines_give_the_same_outcomes_with_few_iterations(model_name, dataset, eps, monkeypatch):
    # the plus version's APGD components (5 restarts for CE and DLR); FAB and Square are the official code
    n = 4 if model_name == "resnet18-standard" else 8  # ResNet-18 costs seconds per pass on a CPU
    _engines_agree("autoattack:variant=plus,n_iter=10,", model_name, dataset, eps, n, monkeypatch,
                   components=("apgd-ce", "apgd-dlr", "apgd-t"))


@pytest.mark.slow
@needs_cifar
@pytest.mark.parametrize("model_name, dataset, eps", ENGINE_MODELS)
def test_autoattack_engines_give_the_same_outcomes(model_name, dataset, eps, monkeypatch):
    robust = _engines_agree("autoattack:", model_name, dataset, eps, 64, monkeypatch)
    if model_name != "resnet18-standard":
        assert robust.any(), "a robust model keeps some examples"


@pytest.mark.slow
def test_pgd40_on_the_madry_mnist_model_matches_the_measured_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBENCH_DATA", str(DATA))
    monkeypatch.setenv("ROBENCH_OFFLINE", "1")
    cell = Cell(dataset="mnist", model="mnist-fast-at", defense="none", attack="pgd:steps=40,step_size=0.01",
                threat=ThreatModel("Linf", 0.3), setting="adaptive", n=1000, batch_size=500)
    with Store(tmp_path / "s.sqlite") as store:
        (key,) = run_grid([cell], store, benchmark="t", device=CPU, progress=False).computed
        robust = store.cell(key).summary["robust_acc"]
    assert abs(robust - 0.909) <= 0.01, f"torchattacks reference 90.9%, robench {robust:.1%}"


@needs_cifar
def test_bpda_breaks_jpeg_where_the_oblivious_attack_does_not(tmp_path, shared_data):
    base = dict(dataset="cifar10", model="resnet18-standard", defense="jpeg", attack="pgd:steps=10",
                threat=LINF8, n=16, batch_size=16)
    cells = [Cell(**base, setting="oblivious"), Cell(**base, setting="adaptive")]
    with Store(tmp_path / "s.sqlite") as store:
        oblivious, adaptive = (store.cell(k).summary["robust_acc"]
                               for k in run_grid(cells, store, benchmark="t", device=CPU, progress=False).computed)
    # measured: 31.2% oblivious vs 0.0% adaptive on these 16 images
    assert oblivious >= adaptive + 0.2


@needs_cifar
def test_transfer_lowers_accuracy_and_an_ensemble_lowers_it_more(tmp_path, shared_data):
    base = dict(dataset="cifar10", model="resnet18-standard", defense="none", attack="pgd:steps=10",
                threat=LINF8, n=32, batch_size=32, setting="transfer")
    cells = [Cell(**base, sources=("resnet20-akamaster",)),
             Cell(**base, sources=("resnet20-akamaster", "convex-cifar-small"))]
    with Store(tmp_path / "s.sqlite") as store:
        single, ensemble = (store.cell(k).summary
                            for k in run_grid(cells, store, benchmark="t", device=CPU, progress=False).computed)
    # measured: clean 100%, from ResNet-20 21.9%, from the ensemble 18.8%
    assert single["robust_acc"] < single["clean_acc"] - 0.5
    assert ensemble["robust_acc"] <= single["robust_acc"]


def _attack_names() -> list[str]:
    return registry.names("attacks")


QUERY_HEAVY = {"autoattack", "square", "fab-t"}  # thousands of queries: seconds each, behind `slow`


OFFLINE_SPECS = {"ssp": "ssp:features=\"vgg16:pretrained=false\",steps=5"}  # the default downloads ImageNet VGG-16 weights


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in QUERY_HEAVY else n for n in _attack_names()]
)
@pytest.mark.parametrize("norm, eps", [("Linf", 2 / 255), ("Linf", 8 / 255), ("L2", 0.25), ("L2", 1.0)])
def test_every_attack_stays_inside_its_threat_model(name, norm, eps):
    attack = registry.build("attacks", OFFLINE_SPECS.get(name, name))
    if norm not in attack.norms:
        pytest.skip(f"{name} does not support {norm}")
    model = registry.build("models", "tiny:size=8,num_classes=4").eval()
    runs_on_bare_model = attack.unsupported("restored", Jitter()) is None
    if attack.unsupported("adaptive", Jitter()) is not None and not runs_on_bare_model:
        # mask-aware attacks need a masked pipeline
        assert attack.unsupported("adaptive", Halves()) is None
        model = Pipeline(model, Halves()).eval()
    data = registry.build("datasets", "synthetic:image_size=8,num_classes=4,size=12").load(n=12)
    threat = ThreatModel(norm, eps)
    torch.manual_seed(0)
    raw = attack.run(model, data.x.clone(), data.y, threat)  # the algorithm itself, before the base projects
    assert raw.shape == data.x.shape
    assert (threat.violation(raw, data.x) <= 1e-5).all(), f"{name} leaves the {threat} ball or [0, 1]"


class Halves(MaskedDefense):
    """A masked defense for tests: keeps the masked pixels, fills the rest with grey."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def sample_masks(self, x, *, generator=None):
        return (torch.rand(x.shape, generator=generator) < 0.5).float()

    def purify_with_masks(self, x, masks):
        self.seen.append(masks)
        return x * masks + 0.5 * (1 - masks)


def test_mask_adaptive_fixes_one_mask_draw_for_the_whole_attack():
    defense = Halves()
    model = registry.build("models", "tiny:size=8,num_classes=4").eval()
    data = registry.build("datasets", "synthetic:image_size=8,num_classes=4,size=12").load(n=12)
    attack = registry.build("attacks", "mask-adaptive:steps=3")
    attack(Pipeline(model, defense), data.x, data.y, ThreatModel("Linf", 8 / 255), seed=0)
    assert len(defense.seen) >= 3
    assert all(torch.equal(m, defense.seen[0]) for m in defense.seen)


def test_mask_adaptive_refuses_a_defense_without_masks(tmp_path):
    cell = Cell(dataset="synthetic", model="tiny", defense="jpeg", attack="mask-adaptive", threat=LINF8, n=8)
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(ConfigError, match="draws no masks"):
        run_grid([cell], store, benchmark="t", device=CPU, progress=False)


def test_autoattack_rand_takes_the_plain_pipeline_not_an_eot_view():
    resolver = Resolver(CPU)
    resolver.defense = lambda spec: Jitter()
    from robench.runner import normalise

    cell = Cell(dataset="synthetic", model="tiny", defense="jitter", attack="autoattack:variant=rand",
                threat=LINF8, n=8, eot=10, draws=5)
    normal = normalise(cell, resolver)
    assert normal.eot == 1 and normal.draws == 5
    assert not isinstance(__import__("robench.views").views.attack_view(normal, resolver), EOT)


def test_attacks_declare_a_supported_kind_and_norms():
    for name in _attack_names():
        cls = registry.load("attacks", name)
        assert issubclass(cls, Attack)
        assert cls.kind in ("white-box", "transfer", "black-box"), name
        assert set(cls.norms) <= {"Linf", "L2"} and cls.norms, name


@needs_cifar
def test_ssp_takes_a_registered_classifiers_layer_as_its_features(shared_data):
    attack = registry.build("attacks", 'ssp:features="resnet18-standard:layer=net.layer2",steps=3,step_size=4/255')
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    threat = ThreatModel("Linf", 16 / 255)
    x_adv = attack(torch.nn.Identity(), x, torch.zeros(2, dtype=torch.long), threat, seed=0)
    features = attack.features(x.device)
    assert (threat.violation(x_adv, x) <= 1e-6).all()
    with torch.no_grad():
        assert (features(x_adv) - features(x)).abs().mean().item() > 0.01


def test_ssp_distorts_features_more_than_its_random_start():
    attack = registry.build("attacks", "ssp:features=\"vgg16:pretrained=false\",steps=10")
    x = registry.build("datasets", "synthetic:image_size=16,size=4").load(n=4).x
    threat = ThreatModel("Linf", 16 / 255)
    features = attack.features(x.device)
    torch.manual_seed(0)
    start = threat.project(torch.randn_like(x), x)
    x_adv = attack(torch.nn.Identity(), x, torch.zeros(4, dtype=torch.long), threat, seed=0)
    with torch.no_grad():
        moved = (features(x_adv) - features(x)).pow(2).mean()
        initial = (features(start) - features(x)).pow(2).mean()
    assert moved > 2 * initial  # measured 3.6x
    assert (threat.violation(x_adv, x) <= 1e-6).all()
