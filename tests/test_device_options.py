"""The device options shared by every gradient attack loop: autocast, channels_last, compile, early stop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robench
from robench import device_options, registry
from robench.archs.small_cnn import SmallCNN
from robench.cell import Cell
from robench.device_options import DeviceOptions, resolve
from robench.masks import MaskedDefense
from robench.report import wilson_interval
from robench.resolve import Resolver
from robench.runner import prepare, run_grid
from robench.store import Store
from robench.target import Pipeline
from robench.threat import ThreatModel

CPU = torch.device("cpu")
THREAT = ThreatModel("Linf", 0.01)  # the centred random CNN below keeps about a third of its 64 images here
ATTACKS = ["pgd:steps=5", "bpda-eot:steps=5", "mask-adaptive:steps=5", "mifgsm:steps=5", "vnifgsm:steps=5,N=2",
           "dim:steps=5", "tidim:steps=5,kernel_size=3"]
SEED = 3


class Centred(nn.Module):
    """A random small CNN whose input is centred and scaled, so its predictions spread over several classes."""

    def __init__(self):
        super().__init__()
        self.net = SmallCNN(3, 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.1)


class KeepMost(MaskedDefense):
    """A masked defense for tests: keeps 80% of the pixels, the others grey."""

    def sample_masks(self, x, *, generator=None):
        return (torch.rand(x.shape, generator=generator) < 0.8).float()

    def purify_with_masks(self, x, masks):
        return x * masks + 0.5 * (1 - masks)


@pytest.fixture(scope="module")
def problem():
    """64 random 16x16 images labelled by the model's own predictions (so all start correctly classified)."""
    torch.manual_seed(0)
    model = Centred().eval()
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def _target(spec: str, model: nn.Module) -> nn.Module:
    return Pipeline(model, KeepMost()).eval() if spec.startswith("mask-adaptive") else model


def _robust(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) == y


# --- (1) every attack takes the options; low precision stays within the interval of float32 -------------------


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
@pytest.mark.parametrize("spec", ATTACKS)
def test_low_precision_accuracy_lies_within_the_float32_interval(problem, spec, autocast):
    model, x, y = problem
    target = _target(spec, model)
    dtypes, layouts = [], []
    hook = model.net[0].register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype))
    layout = model.register_forward_pre_hook(
        lambda module, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        plain = registry.build("attacks", f"{spec},autocast=off,channels_last=false")(target, x, y, THREAT, seed=SEED)
        assert set(dtypes) == {torch.float32} and not any(layouts)
        dtypes.clear()
        low = registry.build("attacks", f"{spec},autocast={autocast},channels_last=true")(
            target, x, y, THREAT, seed=SEED)
    finally:
        hook.remove()
        layout.remove()
    assert {"bf16": torch.bfloat16, "fp16": torch.float16}[autocast] in dtypes, "the forward passes ran under autocast"
    assert any(layouts), "the attacked model was given channels_last input"
    THREAT.check(low, x)
    assert low.dtype == torch.float32 and low.is_contiguous()
    accurate = int(_robust(model, plain, y).sum())
    low_accuracy = _robust(model, low, y).float().mean().item()
    lo, hi = wilson_interval(accurate, len(y))
    assert 0 < accurate < len(y), "the setting keeps some examples and loses others"
    assert lo <= low_accuracy <= hi, (spec, autocast, accurate / len(y), low_accuracy)


def test_options_off_leave_the_model_call_alone():
    model = nn.Linear(2, 2)
    assert DeviceOptions().wrap(model) is model


def test_wrapped_call_returns_float32_logits_under_autocast():
    model = nn.Linear(4, 3)
    logits = DeviceOptions(autocast="bf16").wrap(model)(torch.rand(2, 4))
    assert logits.dtype == torch.float32
    with device_options.float32():
        exact = DeviceOptions(autocast="bf16").wrap(model)(torch.rand(2, 4))
    assert exact.dtype == torch.float32


# --- (2) compile: a model torch.compile cannot compile runs eagerly, with the same result -----------------------


def _refuse(model, *args, **kwargs):
    raise RuntimeError("no compiler on this machine")


def _fail_later(model, *args, **kwargs):
    def call(x):
        raise RuntimeError("backend compiler failed")

    return call


class _BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward lowering failed")


def _fail_at_backward(model, *args, **kwargs):
    return lambda x: model(_BadBackward.apply(x))


@pytest.mark.parametrize("compile_fails", [_refuse, _fail_later, _fail_at_backward],
                         ids=["at-compile", "at-first-call", "at-first-backward"])
@pytest.mark.parametrize("spec", ["pgd:steps=3", "bpda-eot:steps=3", "mifgsm:steps=3"])
def test_compile_falls_back_to_eager_with_one_warning(problem, monkeypatch, compile_fails, spec):
    _, x, y = problem
    torch.manual_seed(0)
    model = Centred().eval()  # a fresh module: compiled models are cached per module
    monkeypatch.setattr(torch, "compile", compile_fails)
    eager = registry.build("attacks", f"{spec},early_stop=true")(model, x[:16], y[:16], THREAT, seed=SEED)
    with pytest.warns(RuntimeWarning, match="torch.compile failed on Centred") as caught:
        compiled = registry.build("attacks", f"{spec},early_stop=true,compile=true")(
            model, x[:16], y[:16], THREAT, seed=SEED)
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1
    assert torch.equal(compiled, eager)


@pytest.mark.slow
def test_a_really_compiled_model_gives_the_eager_result(problem):
    """torch.compile itself (about a minute of compiling on a CPU); a machine without a compiler falls back."""
    model, x, y = problem
    eager = registry.build("attacks", "pgd:steps=3,early_stop=true")(model, x[:16], y[:16], THREAT, seed=SEED)
    compiled = registry.build("attacks", "pgd:steps=3,early_stop=true,compile=true")(
        model, x[:16], y[:16], THREAT, seed=SEED)
    assert torch.allclose(compiled, eager, atol=1e-5)


# --- (3) early stop: the first misclassified iterate, never fewer successes ------------------------------------


@pytest.mark.parametrize("spec", ["pgd:random_start=false", "bpda-eot:random_start=false",
                                  "mask-adaptive:random_start=false", "mifgsm", "dim", "tidim:kernel_size=3"])
def test_early_stop_returns_the_first_misclassified_iterate(problem, spec):
    model, x, y = problem
    target = _target(spec, model)
    steps = 5

    def attack(extra: str) -> torch.Tensor:
        return registry.build("attacks", f"{spec}{',' if ':' in spec else ':'}{extra}")(target, x, y, THREAT, seed=SEED)

    # The iterate after k steps is the output of the same attack run for k steps (same seed, same draws);
    # the iterate after 0 steps is x itself (no random start), which the masked pipeline may already misclassify.
    iterates = torch.stack([x] + [attack(f"steps={k},step_size={THREAT.eps / steps}") for k in range(1, steps + 1)])
    stopped = attack(f"steps={steps},step_size={THREAT.eps / steps},early_stop=true")
    fooled = torch.stack([~_robust_through(target, spec, model, it, y) for it in iterates])  # (steps + 1, B)
    first = torch.where(fooled.any(dim=0), fooled.float().argmax(dim=0), torch.full_like(y, steps))
    expected = iterates[first, torch.arange(len(y))]
    same = torch.isclose(stopped, expected, atol=1e-5).flatten(1).all(dim=1)
    assert fooled.any(dim=0).sum() > 5, "the attack breaks several examples"
    assert same.sum() >= len(y) - 1, f"{int((~same).sum())} examples did not end on their first successful iterate"
    successes = (~_robust_through(target, spec, model, stopped, y)).sum()
    assert successes >= (fooled[-1]).sum() - 1, "early stop never loses the plain attack's successes"


def _robust_through(target, spec, model, x_adv, y):
    """Correct on the attacked function itself (for mask-adaptive: the pipeline with the attack's mask draw)."""
    if not spec.startswith("mask-adaptive"):
        return _robust(model, x_adv, y)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)  # the attack drew its masks first from this seed
        masks = target.defense.sample_masks(x_adv)
    return _robust(model, target.defense.purify_with_masks(x_adv, masks), y)


# --- (4) per-device defaults -------------------------------------------------------------------------------------


def test_defaults_are_off_on_cpu_and_bf16_channels_last_on_cuda():
    assert resolve("cpu") == DeviceOptions(autocast=None, channels_last=False, compile=False)
    assert not resolve(CPU).on
    assert resolve("cuda") == DeviceOptions(autocast="bf16", channels_last=True, compile=False)
    assert resolve("cuda:1", autocast="off", channels_last=False) == DeviceOptions()
    assert resolve("cpu", autocast="fp16", channels_last=True, compile=True) == DeviceOptions("fp16", True, True)
    attack = registry.build("attacks", "mifgsm")
    assert attack.device_options("cpu") == DeviceOptions() and attack.device_options("cuda").autocast == "bf16"


@pytest.mark.parametrize("spec, option", [
    ("pgd:autocast=fp8", "autocast"), ("bpda-eot:channels_last=1", "channels_last"), ("dim:compile=maybe", "compile"),
    ("mask-adaptive:autocast=bf32", "autocast"),
])
def test_bad_option_values_are_refused_naming_the_option(spec, option):
    with pytest.raises(ValueError, match=option):
        registry.build("attacks", spec)


# --- (5) provenance ------------------------------------------------------------------------------------------------


def _cell(attack: str) -> Cell:
    return Cell(dataset="synthetic", model="tiny", defense="none", attack=attack, threat=ThreatModel("Linf", 6 / 255),
                n=96, batch_size=32)


def test_a_default_cpu_cell_keeps_the_key_it_had_before_the_options(monkeypatch):
    monkeypatch.setattr(robench, "__version__", "0")
    # Keys computed by robench before the device options existed, with the version pinned to "0".
    before = {"pgd:steps=5": "794c666977199983102e52fa98ccb988c56591d644ff4fd1087a3ea8f071b7b6",
              "bpda-eot:steps=2": "9d8fd215871a88cb1c9721204b15cd88fa2eaebf0be031fb0141977b0dc0e4f0",
              "mifgsm:steps=3": "ac04ba59f3a55725a1b444dacf2f1abaf90f0a755fc5bad4601c21964d104c41"}
    for attack, key in before.items():
        ((_, now, provenance),) = prepare([_cell(attack)], Resolver(CPU))
        assert now == key and "device_options" not in provenance, attack


def test_the_cell_provenance_records_the_options_it_ran_with(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        cells = [_cell("pgd:steps=2"), _cell("pgd:steps=2,autocast=bf16"), _cell("fgsm")]
        keys = run_grid(cells, store, benchmark="t", device=CPU, progress=False).computed
        stored = {store.cell(key).spec["attack"]: store.cell(key).provenance for key in keys}
    default, bf16, fgsm = (stored[str(cell.attack)] for cell in cells)
    assert default["device_options"] == {"autocast": None, "channels_last": False, "compile": False}
    assert bf16["device_options"]["autocast"] == "bf16"
    assert "device_options" not in fgsm, "an attack without device options records none"
    assert device_options.record(registry.build("attacks", "pgd"), "cuda") == {
        "autocast": "bf16", "channels_last": True, "compile": False}
