"""Conformance of every registered defense and attack to the plugin contract (STYLE 12, DESIGN §4).

Parametrized over the registries (``registry.names``), so a new plugin is checked the moment
its entry point exists. Defenses are built from their defaults, or from ``EXAMPLE_SPECS`` when
the defaults cannot be built (a registered defense with neither fails, saying what to add).
Checks run on CPU on real CIFAR-10 test images (synthetic ones when the offline data is absent):

* shape, dtype and device kept, output finite and in [0, 1], input left untouched (batch 1 and 64);
* declared ``stochastic`` matches behaviour (two calls under different seeds), and a fixed seed
  reproduces a stochastic defense (the runner's seeds make cells repeatable);
* the gradient view (``gradient_view``: the defense, or its BPDA view) returns exactly the
  defense's output and gives a finite, non-zero input gradient; a ``differentiable`` defense has
  such a gradient through itself;
* spec round trip: the spec with every default made explicit prints, parses and builds back to
  an equal object (same class, same hyperparameter attributes, same tensors);
* wrong inputs (3-D tensor, integer dtype, a pixel outside [0, 1]) raise a ValueError
  (``DefenseInputError``) that says what was wrong;
* declared attributes typed (``stochastic``/``differentiable`` bool, ``version`` a non-empty
  string), keyword-only constructor;
* ``MaskedDefense`` subclasses: fixed masks give identical outputs whatever the global seed.

Attacks: built with defaults, declared ``kind``/``norms``/``version``, keyword-only constructor;
and every registered attack *runs* under each norm it supports on the ``tiny`` model and
``synthetic`` data, through the runner's views in the cheapest setting where it applies
(``adaptive`` behind ``none``; ``transfer`` from the victim itself for transfer attacks; the
first registered defense it accepts where it needs one; ``restored`` where only that applies):
its output lies in the threat model, and accuracy on it does not rise above clean accuracy
(one example of tolerance) with half the labels wrong, so an attack that helps the classifier
shows. ``FAST_OPTIONS`` only shortens runs (fewer steps, no download).
"""

from __future__ import annotations

import inspect
import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robench import registry
from robench.cell import Cell
from robench.defense import Defense, gradient_view
from robench.masks import MaskedDefense, fixed_mask_view
from robench.resolve import Resolver
from robench.scoring import predict
from robench.spec import Spec, parse_spec
from robench.threat import NORMS, ThreatModel
from robench.views import attack_view, restored_points, scored_view
from tests.conftest import DATA

# Specs for defenses whose defaults cannot be built (or that need a chain to mean anything).
# Several specs per name are allowed; each becomes its own test case.
EXAMPLE_SPECS: dict[str, list[str]] = {
    "compose": [
        'compose:defenses=["bit-depth","median-filter"]',  # deterministic, BPDA over a chain
        'compose:defenses=["gaussian-noise:sigma=0.05","jpeg"]',  # stochastic + non-differentiable
    ],
    # learned purifiers at a reduced size (the paper size costs seconds per call); static and dynamic modes
    "nrp": ["nrp:nf=8,nb=2,gc=8", "nrp:arch=resg,nf=8,nb=2,dynamic=true"],
    "rdp": ["rdp:width=16,blocks=2", "rdp:width=16,blocks=2,noise=0.05"],
    # EDSR baseline at 32x32 costs seconds per batch of 64 on one core; with the JPEG step of the authors' script
    "sr": ["sr:n_feats=8,n_resblocks=2", "sr:n_feats=8,n_resblocks=1,jpeg_quality=95"],
    "hgd": ["hgd:input_size=32,width=8"],  # the DUNET is built for one image size: CIFAR-10's here
    "jatp": ["jatp:width=8"],
    "ape-gan": ["ape-gan:width=8"],
    "ebm": ["ebm:width=4,steps=3"],
}

ATTACK_KINDS = ("white-box", "transfer", "black-box")
N_IMAGES = 4  # images per check; batch 64 only for the shape check


def _cases() -> list:
    cases = []
    for name in registry.names("defenses"):
        specs = EXAMPLE_SPECS.get(name, [name])
        for i, spec in enumerate(specs):
            cases.append(pytest.param(spec, id=name if len(specs) == 1 else f"{name}-{i}"))
    return cases


CASES = _cases()


def build(spec: str) -> Defense:
    """Build a defense from its example spec, failing (not erroring) with what to do when it cannot."""
    name = parse_spec(spec).name
    try:
        defense = registry.build("defenses", spec)
    except Exception as err:  # noqa: BLE001 - any failure to build is the finding
        hint = (
            f"fix the example in EXAMPLE_SPECS[{name!r}]"
            if name in EXAMPLE_SPECS
            else f"give it buildable defaults or add an example spec to EXAMPLE_SPECS[{name!r}] in {__name__}"
        )
        pytest.fail(f"registered defense {name!r} cannot be built from {spec!r}: {err!r}; {hint}")
    return defense.eval()


@contextmanager
def seeded(seed: int):
    """Seed torch's global generator inside the block only, so other tests see no change."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run on one intra-op thread: these tensors are tiny, and on a loaded 2-core machine OpenMP's
    spin-waiting made the batch-64 SVD / TV solves ~100x slower (10 s instead of 0.1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """64 CIFAR-10 test images ``(64, 3, 32, 32)`` in [0, 1]; smooth synthetic ones if the data is absent."""
    path = DATA / "cifar10_test_head.npz"
    if path.is_file():
        x = np.load(path)["x"][:64]
        return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).contiguous()
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(64, 3, 8, 8, generator=g)
    x = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().div(255).contiguous()  # 8-bit values like real images


# --- outputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("spec", CASES)
def test_output_keeps_shape_dtype_and_range(spec, batch, images):
    defense = build(spec)
    x = images[:batch].clone()
    with seeded(0), torch.no_grad():
        out = defense(x)
    assert isinstance(out, torch.Tensor), f"{spec} returned {type(out).__name__}, not a tensor"
    assert out.shape == x.shape, f"{spec} changed the shape {tuple(x.shape)} -> {tuple(out.shape)}"
    assert out.dtype == x.dtype, f"{spec} changed the dtype {x.dtype} -> {out.dtype}"
    assert out.device == x.device, f"{spec} moved the images {x.device} -> {out.device}"
    assert torch.isfinite(out).all(), f"{spec} returned non-finite values"
    assert out.min() >= 0 and out.max() <= 1, f"{spec} left [0, 1]: [{out.min().item():.4g}, {out.max().item():.4g}]"
    assert torch.equal(x, images[:batch]), f"{spec} modified its input in place"


@pytest.mark.parametrize("spec", CASES)
def test_float64_input_stays_float64(spec, images):
    x = images[:2].double()
    with seeded(0), torch.no_grad():
        out = build(spec)(x)
    assert out.dtype == torch.float64 and out.shape == x.shape, (
        f"{spec}: float64 {tuple(x.shape)} -> {out.dtype} {tuple(out.shape)}"
    )
    assert out.min() >= 0 and out.max() <= 1


# --- declared stochasticity ------------------------------------------------------------------


@pytest.mark.parametrize("spec", CASES)
def test_declared_stochasticity_matches_behaviour(spec, images):
    defense = build(spec)
    x = images[:N_IMAGES]
    with torch.no_grad():
        with seeded(1):
            first = defense(x)
        with seeded(2):
            second = defense(x)
    if defense.stochastic:
        assert not torch.equal(first, second), (
            f"{spec} declares stochastic=True but two calls under different seeds gave identical outputs"
        )
    else:
        diff = (first - second).abs().max().item()
        assert torch.equal(first, second), (
            f"{spec} declares stochastic=False but two identical calls differ (max |diff| {diff:.3g})"
        )


@pytest.mark.parametrize("spec", CASES)
def test_a_fixed_seed_reproduces_the_output(spec, images):
    defense = build(spec)
    x = images[:N_IMAGES]
    with torch.no_grad():
        with seeded(3):
            first = defense(x)
        with seeded(3):
            second = defense(x)
    assert torch.equal(first, second), (
        f"{spec}: the same global seed gave different outputs (randomness not from torch's generator?)"
    )


# --- gradients -------------------------------------------------------------------------------


def _input_gradient(module: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output of ``module`` and the gradient of a random projection of it w.r.t. ``x``."""
    x = x.clone().requires_grad_(True)
    with seeded(seed):
        out = module(x)
    if out.requires_grad:
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
        (out * weights).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("spec", CASES)
def test_gradient_view_returns_the_defense_value_and_a_useful_gradient(spec, images):
    defense = build(spec)
    x = images[:N_IMAGES]
    with seeded(5), torch.no_grad():
        real = defense(x)
    value, grad = _input_gradient(gradient_view(defense), x, seed=5)
    kind = "the defense itself" if defense.differentiable else "its BPDA surrogate"
    how = " under the same seed" if defense.stochastic else ""
    assert torch.equal(value, real), (
        f"gradient_view({spec}) does not return the defense's output{how} "
        f"(max |diff| {(value - real).abs().max().item():.3g})"
    )
    assert grad is not None, f"gradient_view({spec}) is not connected to its input (gradient through {kind})"
    assert torch.isfinite(grad).all(), f"gradient_view({spec}): non-finite input gradient (through {kind})"
    assert grad.abs().sum() > 0, f"gradient_view({spec}): input gradient is all zero (through {kind})"


@pytest.mark.parametrize("spec", CASES)
def test_differentiable_defense_has_a_finite_nonzero_gradient(spec, images):
    defense = build(spec)
    if not defense.differentiable:
        pytest.skip(f"{spec} declares differentiable=False: attacks use its BPDA view (tested above)")
    out, grad = _input_gradient(defense, images[:N_IMAGES], seed=6)
    assert grad is not None, f"{spec} declares differentiable=True but its output is detached from the input"
    assert torch.isfinite(grad).all(), f"{spec}: non-finite gradient through the defense"
    assert grad.abs().sum() > 0, f"{spec} declares differentiable=True but its input gradient is all zero"


# --- specs, attributes, constructor ----------------------------------------------------------


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def explicit_spec(spec: str) -> Spec:
    """``spec`` with every JSON-typed keyword default of the plugin's constructor written out."""
    parsed = parse_spec(spec)
    params = inspect.signature(registry.load("defenses", parsed.name)).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not p.empty and _jsonable(p.default)}
    return Spec.of(parsed.name, **{**defaults, **parsed.options})


def hyperparameters(module: nn.Module) -> dict:
    """Public instance attributes, submodules (recursively) and tensors, in comparable form."""

    def canon(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", str(value.dtype), tuple(value.shape), value.detach().cpu().flatten().tolist())
        if isinstance(value, nn.Module):
            return (type(value).__qualname__, hyperparameters(value))
        if isinstance(value, dict):
            return {k: canon(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [canon(v) for v in value]
        return value

    attrs = {k: canon(v) for k, v in vars(module).items() if not k.startswith("_") and k != "training"}
    attrs.update({f"module:{k}": canon(v) for k, v in module.named_children()})
    attrs.update({f"tensor:{k}": canon(v) for k, v in [*module.named_parameters(), *module.named_buffers()]})
    return attrs


@pytest.mark.parametrize("spec", CASES)
def test_spec_round_trip_builds_an_equal_defense(spec):
    explicit = explicit_spec(spec)
    text = str(explicit)
    assert str(parse_spec(text)) == text, f"{text!r} does not print back as itself"
    reference = build(spec)
    for key, value in explicit.options.items():  # an attribute named after a keyword holds its value
        if key in vars(reference) and _jsonable(vars(reference)[key]):
            held = vars(reference)[key]
            assert held == value or (isinstance(held, tuple) and list(held) == value), (
                f"{spec}: attribute {key}={held!r} does not hold the spec's value {value!r}"
            )
    for other in (build(text), registry.build("defenses", explicit)):
        assert type(other) is type(reference), f"{text!r} built {type(other).__name__}, not {type(reference).__name__}"
        assert hyperparameters(other) == hyperparameters(reference), (
            f"{text!r} builds a defense that differs from {spec!r}:\n"
            f"{hyperparameters(other)}\n!=\n{hyperparameters(reference)}"
        )


@pytest.mark.parametrize("spec", CASES)
def test_declared_attributes(spec):
    defense = build(spec)
    for attr in ("stochastic", "differentiable"):
        assert isinstance(getattr(defense, attr), bool), f"{spec}.{attr} is {getattr(defense, attr)!r}, not a bool"
    for owner in (type(defense), defense):
        assert isinstance(owner.version, str) and owner.version.strip(), (
            f"{spec}: version {owner.version!r} is not a non-empty string"
        )
    checkpoints = defense.checkpoints
    assert isinstance(checkpoints, dict), f"{spec}.checkpoints is {type(checkpoints).__name__}, not a dict"


@pytest.mark.parametrize("spec", CASES)
def test_constructor_is_keyword_only(spec):
    cls = registry.load("defenses", parse_spec(spec).name)
    _assert_keyword_only(cls, f"defense {parse_spec(spec).name!r}")


def _assert_keyword_only(cls: type, who: str) -> None:
    params = inspect.signature(cls).parameters.values()
    # Named positional parameters break the contract; ``*args`` (nn.Module's own ``__init__``) is
    # allowed as long as a positional argument is refused, which the call below checks.
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert not positional, (
        f"{who}: constructor arguments {positional} are not keyword-only (write `def __init__(self, *, ...)`)"
    )
    with pytest.raises(TypeError):
        cls(1)


# --- wrong inputs ----------------------------------------------------------------------------


def _bad_inputs(images: torch.Tensor) -> dict[str, tuple[torch.Tensor, str]]:
    x = images[:2]
    above, below = x.clone(), x.clone()
    above[1, 2, 3, 4] = 1.01
    below[0, 1, 2, 3] = -0.01
    return {
        "3-D tensor": (x[0], "3, 32, 32"),
        "uint8 images": ((x * 255).round().to(torch.uint8), "uint8"),
        "a pixel above 1": (above, "1.01"),
        "a pixel below 0": (below, "-0.01"),
    }


@pytest.mark.parametrize("case", ["3-D tensor", "uint8 images", "a pixel above 1", "a pixel below 0"])
@pytest.mark.parametrize("spec", CASES)
def test_wrong_input_raises_a_clear_value_error(spec, case, images):
    x, mentions = _bad_inputs(images)[case]
    defense = build(spec)
    with pytest.raises(ValueError) as info, torch.no_grad():
        defense(x)
    assert mentions in str(info.value), f"{spec}: the error for {case} does not say what was given: {info.value}"


# --- masked defenses -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", CASES)
def test_masked_defense_with_fixed_masks_is_deterministic(spec, images):
    defense = build(spec)
    if not isinstance(defense, MaskedDefense):
        pytest.skip(f"{spec} is not a MaskedDefense")
    x = images[:N_IMAGES]
    masks = defense.sample_masks(x, generator=torch.Generator().manual_seed(0))
    again = defense.sample_masks(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again), f"{spec}.sample_masks is not reproducible from its generator"
    assert len(masks) == len(x), f"{spec}.sample_masks: {len(masks)} masks for {len(x)} images"
    with torch.no_grad():
        with seeded(1):
            first = defense.purify_with_masks(x, masks)
        with seeded(2):
            second = defense.purify_with_masks(x, masks)
        with seeded(3):
            view = fixed_mask_view(defense, masks)(x)
    assert torch.equal(first, second), f"{spec}: the same fixed masks gave different outputs"
    assert torch.equal(view, first), f"{spec}: fixed_mask_view differs from purify_with_masks"
    assert first.shape == x.shape and first.min() >= 0 and first.max() <= 1


# --- registry bookkeeping --------------------------------------------------------------------


def test_example_specs_name_registered_defenses():
    stale = sorted(set(EXAMPLE_SPECS) - set(registry.names("defenses")))
    assert not stale, f"EXAMPLE_SPECS has entries for unregistered defenses: {stale}"
    for name, specs in EXAMPLE_SPECS.items():
        assert all(parse_spec(s).name == name for s in specs), f"EXAMPLE_SPECS[{name!r}] names another plugin"


# --- attacks: built and declared ---------------------------------------------------------------


@pytest.mark.parametrize("name", registry.names("attacks"))
def test_attack_builds_with_defaults_and_declares_itself(name):
    try:
        attack = registry.build("attacks", name)
    except Exception as err:  # noqa: BLE001 - any failure to build is the finding
        pytest.fail(f"registered attack {name!r} cannot be built with its defaults: {err!r}")
    assert attack.kind in ATTACK_KINDS, f"{name}.kind is {attack.kind!r}, not one of {ATTACK_KINDS}"
    norms = tuple(attack.norms)
    assert norms and set(norms) <= set(NORMS), (
        f"{name}.norms is {attack.norms!r}; expected a non-empty subset of {NORMS}"
    )
    assert isinstance(attack.version, str) and attack.version.strip(), (
        f"{name}.version {attack.version!r} is not a non-empty string"
    )
    # The runner keys cached results on the instance's version; a hyperparameter stored as
    # `version` would hide every bump of the plugin's declared version.
    assert attack.version == type(attack).version, (
        f"{name}: instance version {attack.version!r} differs from the declared {type(attack).__name__}.version "
        f"{type(attack).version!r}, so bumping the declared version would not invalidate cached results"
    )


@pytest.mark.parametrize("name", registry.names("attacks"))
def test_attack_constructor_is_keyword_only(name):
    _assert_keyword_only(registry.load("attacks", name), f"attack {name!r}")


# --- attacks: run on tiny + synthetic ----------------------------------------------------------

RUN_MODEL = "tiny:num_classes=4"
RUN_DATASET = "synthetic:num_classes=4"
RUN_N = 8
# A budget per norm at which the attacks break examples quickly (query attacks stop early then).
RUN_THREATS = {"Linf": ThreatModel("Linf", 8 / 255), "L2": ThreatModel("L2", 1.0)}
# Options that only make a run short (fewer steps, no download); other attacks run with their defaults.
FAST_OPTIONS = {
    "pgd": "steps=3", "bpda-eot": "steps=3", "mask-adaptive": "steps=3", "restored-pgd": "steps=3",
    "ssp": "features=\"vgg16:pretrained=false\",steps=3", "mifgsm": "steps=3", "vmifgsm": "steps=3,N=2", "vnifgsm": "steps=3,N=2",
    "dim": "steps=3", "tidim": "steps=3", "sinitidim": "steps=3,scales=2",
}

# Square spends all its 5000 queries (about 8 s) when it breaks nothing, as under L2 here: behind `slow`.
SLOW_RUNS = {("square", "L2")}


def _run_cases() -> list:
    return [
        pytest.param(name, norm, id=f"{name}-{norm}", marks=[pytest.mark.slow] if (name, norm) in SLOW_RUNS else [])
        for name in registry.names("attacks")
        for norm in NORMS
    ]


def _fast_spec(name: str) -> str:
    return f"{name}:{FAST_OPTIONS[name]}" if name in FAST_OPTIONS else name


def _buildable_defenses() -> list[str]:
    """``none`` first, then every registered defense that builds with its defaults."""
    names = []
    for name in registry.names("defenses"):
        try:
            registry.build("defenses", name)
        except Exception:  # noqa: BLE001 - a defense that needs options cannot host an attack here
            continue
        names.append(name)
    return sorted(names, key=lambda name: name != "none")


def attack_cell(name: str, norm: str) -> Cell | str:
    """The cheapest cell in which attack ``name`` runs under ``norm``, or why there is none."""
    spec = _fast_spec(name)
    attack = registry.build("attacks", spec)
    if norm not in attack.norms:
        return f"{name} supports {', '.join(attack.norms)}, not {norm}"
    base = dict(dataset=RUN_DATASET, model=RUN_MODEL, attack=spec, threat=RUN_THREATS[norm], n=RUN_N,
                batch_size=RUN_N)
    if attack.kind == "transfer":
        return Cell(defense="none", setting="transfer", sources=(RUN_MODEL,), **base)
    for setting in ("adaptive", "restored"):
        for defense in _buildable_defenses():
            if attack.unsupported(setting, registry.build("defenses", defense)) is None:
                return Cell(defense=defense, setting=setting, **base)
    return f"{name} refuses the adaptive and restored settings behind every buildable defense"


@pytest.mark.parametrize("name, norm", _run_cases())
def test_attack_stays_in_the_threat_model_and_never_raises_accuracy(name, norm):
    cell = attack_cell(name, norm)
    if isinstance(cell, str):
        pytest.skip(cell)
    resolver = Resolver(torch.device("cpu"))
    examples = resolver.cell_examples(cell)
    x, y = examples.x, examples.y.clone()
    y[::2] = (y[::2] + 1) % 4  # half the labels wrong: clean accuracy about 50%, room to rise
    if cell.setting == "restored":
        x = restored_points(cell, resolver, x, y)
    attack = resolver.attack(cell.attack)
    x_adv = attack(attack_view(cell, resolver), x, y, cell.threat, seed=0)  # raises on a violation
    assert x_adv.shape == x.shape
    assert (cell.threat.violation(x_adv, x) <= cell.threat.tolerance).all(), f"{cell.attack} left {cell.threat}"
    scorer = scored_view(cell, resolver)
    with seeded(1):
        clean = (predict(scorer, x) == y).float().mean().item()
    with seeded(1):
        robust = (predict(scorer, x_adv) == y).float().mean().item()
    assert robust <= clean + 1 / RUN_N + 1e-9, (
        f"{cell.attack} ({cell.setting}, {cell.threat}) raised accuracy from {clean:.2f} to {robust:.2f}"
    )


def test_fast_options_and_slow_runs_name_registered_attacks():
    named = set(FAST_OPTIONS) | {name for name, _ in SLOW_RUNS}
    stale = sorted(named - set(registry.names("attacks")))
    assert not stale, f"FAST_OPTIONS or SLOW_RUNS name unregistered attacks: {stale}"
