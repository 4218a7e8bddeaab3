"""``robench train hgd``: HGD's guided training of the DUNET in front of a frozen classifier (Liao et al.,
CVPR 2018; specs A3).

Every batch: adversarial examples x' of the clean images x (HGD's training attack set, or DIR's
PGD-5 against the target), the denoised D(x'), and one Adam step of the DUNET on the guide loss:
the L1 distance ``mean |f_l(D(x')) - f_l(x)|`` between the frozen target's outputs at the denoised
and the clean image (FGD: its last convolutional feature map; LGD: its logits), or the pixel
distance ``mean |D(x') - x|``, or CGD's cross-entropy of ``f(D(x'))`` on the true label. Only the
DUNET trains; the checkpoint loads as ``hgd:weights=PATH``.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses.hgd.defense import HGD
from robench.hyper import check_positive, check_positive_int
from robench.spec import SpecError, parse_eps, parse_spec
from robench.threat import ThreatModel
from robench.train.checks import build_plugin, check_trained
from robench.train.inner import evaluating, perturb
from robench.train.loop import Schedule, StepResult, TrainingError
from robench.train.recipes import Recipe
from robench.train.trainer import DefenseTrainer, Phase

GUIDES = ("feature", "logits", "pixel", "cross-entropy")
ATTACKS = ("set", "pgd")


class HGDRecipe(Recipe):
    """HGD's training objective (specs A3, "Loss" and "Training"), built from ``hgd:KEY=VALUE,...``.

    ``attack="set"`` (default) is HGD's training attack set (``Exps/sample/train_attack.txt``), one
    attack drawn per image, each with its own budget, a random integer in [1, 16) / 255
    (``random_eps``): no-op; random noise ``x + eps * sign(N(0, I))`` (the NIPS 2017 sample attack,
    specs [MEM]); FGSM on each source model; FGSM on their ensemble (two sources or more); 2- and
    4-step iterative FGSM on the ensemble (step eps / steps, no random start, on the source's own
    prediction at x, as ``attack_iter.py``). The sources are ``sources`` (registered model specs
    with trained weights; the paper's are Inc-v3, ResNet-v2 and IncRes-v2), or the target when
    none are given; an ensemble averages logits. ``attack="pgd"`` is DIR's retraining of HGD on
    CIFAR-10 (Sec. 4.1): PGD against the frozen target, ``steps`` steps of ``step_size`` within
    ``eps`` from a uniform random start, on the true label.

    Deviations from the released code: it draws the attacks offline, every training image under
    every attack, so one of its epochs holds (attacks) x (images) pairs; here every image draws one
    attack per epoch, on the fly. Its iterative attacks add 0.4 x the cross-entropy of Inception's
    auxiliary logits, which registered models do not expose; [CHOICE] an ensemble averages logits
    (how the released ensemble attacks combine their models was not read). The pixel loss is
    measured in [0, 1] units (the released [-1, 1] doubles it; Adam's steps do not depend on that
    scale). The released loader flips images horizontally at random; robench applies the dataset's
    usual augmentation (``--augment``).

    Args:
        guide: ``"feature"`` (FGD, the sample config's), ``"logits"`` (LGD), ``"pixel"`` (the
            pixel-guided baseline) or ``"cross-entropy"`` (CGD).
        layer: the target's module whose output FGD matches; default: its last convolutional
            feature map (the last module, in execution order, with a 4-D output larger than 1x1:
            ``Mixed_7c`` for Inception-v3 as in the sample config, ``layer4`` for a ResNet), which
            the trainer writes into the recipe, so the model card names it.
        attack: ``"set"`` or ``"pgd"``.
        sources: model specs attacked by the set (default: the target).
        max_eps: the set's per-image budgets are the integers 1 .. 255 * max_eps - 1, over 255 (16/255).
        eps, step_size, steps: the PGD attack (8/255, 2/255, 5: DIR's).
    """

    name = "hgd"
    # GD_train/main.py: Adam, lr 0.01, weight decay 0, batch 32, 100 epochs, lr x0.1 after 60 % of the
    # epochs and x0.01 after 90 % (for other epoch counts give --milestones at 60 % and 90 %).
    schedule = Schedule(epochs=100, batch_size=32, lr=0.01, weight_decay=0.0, milestones=(61, 91), optimizer="adam")

    def __init__(self, *, guide: str = "feature", layer: "str | None" = None, attack: str = "set",
                 sources: "list[str] | None" = None, max_eps: float = 16 / 255, eps: float = 8 / 255,
                 step_size: float = 2 / 255, steps: int = 5):
        if guide not in GUIDES:
            raise ValueError(f"guide must be one of {', '.join(GUIDES)}, got {guide!r}")
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ValueError(f"layer must be a module name of the target, e.g. net.layer4; got {layer!r}")
        if sources is not None and (not isinstance(sources, list) or not sources
                                    or not all(isinstance(s, str) for s in sources)):
            raise ValueError(f"sources must be a non-empty list of model specs, e.g. [\"inception-v3\"]; got {sources!r}")
        if sources is not None and attack != "set":
            raise ValueError("sources are the models HGD's attack set attacks; attack=pgd attacks the target")
        self.max_eps = parse_eps(max_eps)
        levels = 255 * self.max_eps
        if abs(levels - round(levels)) > 1e-6 or round(levels) < 2:
            raise ValueError(f"max_eps must be an integer of at least 2 over 255, e.g. 16/255; got {max_eps!r}")
        self.eps = parse_eps(eps)
        check_positive("step_size", step_size)
        check_positive_int("steps", steps)
        self.guide, self.layer, self.attack, self.sources = guide, layer, attack, sources
        self.step_size = float(step_size)
        self.steps = steps

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel("Linf", self.eps)

    def pgd(self, target: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x': PGD on the target's cross-entropy (eval mode), uniform random start (DIR Sec. 4.1)."""
        with evaluating(target):
            return perturb(target, x, lambda logits: F.cross_entropy(logits.float(), y), self.threat,
                           step_size=self.step_size, steps=self.steps, start="uniform", generator=generator)

    def attack_set(self, sources: list[nn.Module], x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x': one attack of :func:`training_attacks` per image, each with its own random budget (HGD)."""
        attacks = training_attacks(len(sources))
        b = len(x)
        drawn = torch.randint(len(attacks), (b,), generator=generator, device=x.device)
        eps = torch.randint(1, round(255 * self.max_eps), (b, 1, 1, 1), generator=generator, device=x.device) / 255
        signs = torch.randn(x.shape, generator=generator, device=x.device).sign()
        x_adv = x.clone()
        for index, (name, iterations, attacked) in enumerate(attacks):
            chosen = drawn == index
            if name == "noise":
                x_adv[chosen] = (x[chosen] + eps[chosen] * signs[chosen]).clamp(0, 1)
            elif iterations and chosen.any():
                models = [sources[i] for i in attacked]
                x_adv[chosen] = iterative_fgsm(models, x[chosen], eps[chosen], iterations)
        return x_adv

    def loss(self, denoiser: HGD, target: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> StepResult:
        """The guide loss of D(x') (HGD's ``DenoiseLoss`` with n = 1, or CGD's cross-entropy) and f(D(x'))'s logits."""
        denoised = denoiser.denoise(x_adv)
        if self.guide == "pixel":
            return StepResult(F.l1_loss(denoised.float(), x.float()))
        if self.guide == "feature":
            with torch.no_grad():
                clean, _ = layer_and_logits(target, x, self.layer)
            features, logits = layer_and_logits(target, denoised, self.layer)
            return StepResult(F.l1_loss(features.float(), clean.float()), logits)
        logits = target(denoised)
        if self.guide == "cross-entropy":
            return StepResult(F.cross_entropy(logits.float(), y), logits)
        with torch.no_grad():
            clean = target(x)
        return StepResult(F.l1_loss(logits.float(), clean.float()), logits)


def training_attacks(sources: int) -> list[tuple[str, int, tuple[int, ...]]]:
    """HGD's training attack set for ``sources`` models: (name, FGSM iterations, attacked sources) each."""
    every = tuple(range(sources))
    attacks = [("no-op", 0, ()), ("noise", 0, ())]
    attacks += [(f"fgsm-{i}", 1, (i,)) for i in every]
    if sources > 1:
        attacks.append(("fgsm-ensemble", 1, every))
    return attacks + [("iter2-ensemble", 2, every), ("iter4-ensemble", 4, every)]


def iterative_fgsm(models: list[nn.Module], x: torch.Tensor, eps: torch.Tensor, iterations: int) -> torch.Tensor:
    """HGD's ``attack_iter.py``: ``iterations`` signed steps of eps / iterations on the ensemble's cross-entropy.

    ``x`` (B, C, H, W) in [0, 1], ``eps`` (B, 1, 1, 1) per image; the label is the ensemble's
    prediction at ``x`` (averaged logits); every step is clipped to the eps-ball and to [0, 1]; no
    random start (one iteration is FGSM). Hand-written because the budget differs per image.
    """
    def ensemble(images):
        return torch.stack([model(images).float() for model in models]).mean(0)

    with torch.no_grad():
        label = ensemble(x).argmax(1)
    x_adv = x.detach()
    for _ in range(iterations):
        x_adv = x_adv.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(ensemble(x_adv), label, reduction="sum"), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + eps / iterations * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


@contextmanager
def _capture(model: nn.Module, layer: str) -> Iterator[list]:
    outputs: list = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda module, i, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def layer_and_logits(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of ``model``'s module ``layer`` (its last call) and the logits, from one forward pass."""
    with _capture(model, layer) as outputs:
        logits = model(x)
    return outputs[-1], logits


def last_feature_map(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the last module, in execution order, whose output is a 4-D map larger than 1x1 (HGD's FGD layer)."""
    finished: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_hook(
                lambda m, i, out, name=name: finished.append(name)
                if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1 else None))
    try:
        with torch.no_grad(), evaluating(model):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    if not finished:
        raise TrainingError("the target has no convolutional feature map for hgd:guide=feature; name its layer "
                            "with hgd:layer=NAME or use guide=logits")
    return finished[-1]


class HGDTraining(DefenseTrainer):
    """A checked ``robench train hgd`` run: the DUNET trained in front of the fixed ``--target`` (the guide).

    One phase, seeded with ``seed``; the attacks' draws come from the run's generator, so a rerun
    of the same command resumes or reproduces the same weights.
    """

    trains = HGD
    recipe_class = HGDRecipe

    @cached_property
    def sources(self) -> list[nn.Module]:
        """The frozen models the attack set attacks: ``sources`` built, or the target."""
        if self.recipe.sources is None:
            return [self.target]
        built = []
        for text in self.recipe.sources:
            try:
                spec = parse_spec(text)
            except SpecError as err:
                raise TrainingError(f"hgd:sources: {err}") from None
            model = build_plugin("models", spec)
            check_trained(model, spec, "HGD's training attack set")
            built.append(model.eval().requires_grad_(False))
        return built

    def resolve_layer(self) -> None:
        """Check FGD's ``layer`` on the target, or find its last convolutional map and write it into the recipe (and card)."""
        recipe = self.recipe
        if recipe.guide != "feature":
            return
        if recipe.layer is None:
            device = next(iter(self.target.state_dict().values()), torch.empty(0)).device
            recipe.layer = last_feature_map(self.target, self.train.x[:1].to(device))
        elif recipe.layer not in dict(self.target.named_modules()):
            raise TrainingError(f"hgd:layer={recipe.layer!r}: the target {str(self.target_spec)!r} has no such "
                                "module (omit layer to use its last convolutional feature map)")

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """One batch: x' from the recipe's attack, then the guide loss of D(x')."""
        if self.recipe.attack == "pgd":
            x_adv = self.recipe.pgd(self.target, x, y, generator)
        else:
            sources = [source.to(x.device) for source in self.sources]
            x_adv = self.recipe.attack_set(sources, x, generator)
        return self.recipe.loss(self.module, self.target, x, x_adv, y)

    def phases(self) -> list[Phase]:
        """One phase over the schedule's epochs."""
        size = tuple(self.train.x.shape[-2:])
        expected = self.module.input_size
        if size != (expected, expected):
            raise TrainingError(f"{str(self.dataset_spec)!r} images are {size[0]}x{size[1]}, but this DUNET takes "
                                f"{expected}x{expected}; train hgd:input_size={size[-1]}")
        self.resolve_layer()
        config = {"recipe": str(self.recipe.spec)}
        if self.recipe.sources is not None:  # built and checked now, before any epoch; their weights join the identity
            config["sources"] = {spec: dict(getattr(model, "checkpoints", {}))
                                 for spec, model in zip(self.recipe.sources, self.sources)}
        return [Phase("main", self.schedule, self.step, seed=self.seed, config=config)]
