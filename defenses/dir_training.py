"""``robench train dir``: DIR's pre-training (Eq. 2) and main training (Algorithm 1) in front of a fixed target.

Zhou et al., "Eliminating Adversarial Noise via Information Discard and Robust Representation
Restoration", ICML 2023 (specs A1). The ``dir`` defense names this module as its ``trainer``;
``robench train dir --model DIR_SPEC --target MODEL_SPEC --dataset D`` plans a run with
:meth:`DIRTraining.plan` (every bad input fails there) and trains it with :meth:`DIRTraining.run`,
both phases on the shared loop :func:`robench.train.fit`.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robench import registry
from robench.checkpoint import CheckpointError, sha256_of
from robench.data import Examples
from robench.defenses.dir import DIR, IMAGE_SHAPE
from robench.hyper import check_positive, check_positive_int
from robench.env import environment
from robench.spec import Spec, format_fraction, parse_eps
from robench.target import EOT, Pipeline
from robench.threat import ThreatModel
from robench.train.augment import AUGMENTATIONS, default_augmentation
from robench.train.card import CARD_FORMAT
from robench.train.evaluate import Evaluation, robust_accuracy
from robench.train.files import save_json, save_torch
from robench.train.inner import NORMAL_START_STD, evaluating, perturb
from robench.train.loop import Runtime, Schedule, StepResult, TrainingError, fit
from robench.train.recipes import Recipe, build_recipe
from robench.train.targets import CHECKPOINT_DIR, _build, _check_fits, _check_writable, _load, _spec

GRADIENT_PATHS = ("both", "released")
# EOT draws of the per-epoch white-box attack: the dir2023 benchmarks' value, so the card's final
# robust accuracy is measured as those tables measure DIR.
EVAL_EOT = 10


class DIRRecipe(Recipe):
    """DIR's training objectives (specs A1, "Losses" and "Training recipe"), built from ``dir:KEY=VALUE,...``.

    Phase 1, pre-training (Eq. 2), ``pretrain_epochs`` epochs: x' = PGD (``eps``, ``steps`` steps
    of ``step_size``, uniform random start, cross-entropy) against the target ``h`` alone, then
    the denoiser's :meth:`~robench.defenses.dir.DIR.pretrain_loss` (MSE of the views' average to
    the natural image). [CHOICE] x' uses DIR's training attack (Sec. 4.1: eps 8/255, 5 steps of
    2/255); the released pre-training data was made with other, unrecorded settings (the script's
    unused defaults are 20 steps of 0.003).

    Phase 2, main training (Algorithm 1): per mini-batch x' = the same PGD against the pipeline
    ``h(g(x))`` (fresh masks in every call; the attack differentiates through DIR); x~ = g(x'),
    the defense's output (views averaged, fresh masks; clamped to [0, 1] unless the defense spec
    says ``clamp=false``); delta maximises ``KL(h(x~ + delta), h(x~))`` (Eq. 4) on ``x~.detach()``,
    started at ``x~ + 0.001 N(0, I)``, ``inner_steps`` signed steps of ``inner_step_size``, each
    projected onto the ``eps`` ball around x~ and [0, 1]. ``L_adv = CE(h(x~), y)`` (Eq. 6, the
    code's sign), ``L_rep = KL(h(x~ + delta.detach()), h(x~))`` as the code computes it
    (``KLDivLoss(log_softmax(h(x~ + delta)), softmax(h(x~)))`` summed, divided by the batch size),
    with gradients through both terms (Eq. 5); ``L_den = L_adv + alpha * L_rep`` (Eq. 7).

    Named deviations, off by default:

    * ``alpha=1``: the released code's weight (the paper's is 2).
    * ``project_inner=false``: the released inner attack, which computes the ball projection and
      the [0, 1] clamp and then discards them (|delta| up to ``inner_steps * inner_step_size``).
    * ``gradient_path="released"``: the released gradient path: delta is computed from a separate
      restoration of x' (its own masks), x~ + delta is a constant, and L_adv and L_rep's clean
      term each run their own fresh restoration of x', so L_rep reaches the denoiser only through
      h(x~).
    * ``mse_weight=W``: adds ``W * MSE(x~, x)`` to L_den; with ``pretrain_epochs=0`` this is the
      paper's "without pre-training" ablation (Sec. 4.3: the MSE to the natural image added to L_den).

    Not implemented: the released ``train.py``'s joint training of a freshly initialised
    classifier (the paper keeps the target fixed) and its AdamW pre-training (MAE recipe, 1000
    epochs). The released denoiser lr (5e-5, constant) is ``--lr 5e-5 --milestones ""``.

    Args:
        pretrain_epochs: epochs of phase 1 (20; 0 skips it).
        alpha: weight of L_rep (2; the paper sweeps [0, 5]).
        eps: Linf budget of x' and of the inner delta (8/255).
        step_size: PGD step of x' (2/255).
        steps: PGD iterations of x' (5).
        inner_step_size: step of the inner maximisation (2/255).
        inner_steps: its iterations (5).
        project_inner: project the inner delta (True; False: the released code).
        gradient_path: ``"both"`` (Eq. 5) or ``"released"`` (see above).
        mse_weight: weight of the added reconstruction term (0).
    """

    name = "dir"
    # DIR Sec. 4.1: SGD momentum 0.9, weight decay 2e-4, lr 1e-2 / 10 at epochs 75 and 90, 90 epochs;
    # batch 128 (the released code's; the paper does not say).
    schedule = Schedule(epochs=90, lr=1e-2, weight_decay=2e-4, milestones=(75, 90))

    def __init__(
        self,
        *,
        pretrain_epochs: int = 20,
        alpha: float = 2.0,
        eps: float = 8 / 255,
        step_size: float = 2 / 255,
        steps: int = 5,
        inner_step_size: float = 2 / 255,
        inner_steps: int = 5,
        project_inner: bool = True,
        gradient_path: str = "both",
        mse_weight: float = 0.0,
    ):
        if isinstance(pretrain_epochs, bool) or not isinstance(pretrain_epochs, int) or pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be an integer >= 0, got {pretrain_epochs!r}")
        for name, value in (("alpha", alpha), ("mse_weight", mse_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.eps = parse_eps(eps)
        check_positive("step_size", step_size)
        check_positive("inner_step_size", inner_step_size)
        check_positive_int("steps", steps)
        check_positive_int("inner_steps", inner_steps)
        if not isinstance(project_inner, bool):
            raise ValueError(f"project_inner must be true or false, got {project_inner!r}")
        if gradient_path not in GRADIENT_PATHS:
            raise ValueError(f"gradient_path must be one of {', '.join(GRADIENT_PATHS)}, got {gradient_path!r}")
        self.pretrain_epochs = pretrain_epochs
        self.alpha = float(alpha)
        self.step_size = float(step_size)
        self.steps = steps
        self.inner_step_size = float(inner_step_size)
        self.inner_steps = inner_steps
        self.project_inner = project_inner
        self.gradient_path = gradient_path
        self.mse_weight = float(mse_weight)


    @property
    def threat(self) -> ThreatModel:
        return ThreatModel("Linf", self.eps)

    def attack(self, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """x': PGD on the cross-entropy of ``classifier`` (eval mode), uniform random start (DIR Sec. 4.1)."""
        with evaluating(classifier):
            return perturb(classifier, x, lambda logits: F.cross_entropy(logits.float(), y), self.threat,
                           step_size=self.step_size, steps=self.steps, start="uniform", generator=generator)

    def pretrain_loss(self, denoiser: DIR, target: nn.Module, x, y, generator) -> StepResult:
        """Phase 1 (DIR Eq. 2): restore the natural ``x`` from x' crafted against the target alone."""
        return StepResult(denoiser.pretrain_loss(self.attack(target, x, y, generator), x))

    def inner_maximisation(self, target: nn.Module, x_tilde: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x~ + delta, delta ascending ``KL(h(x~ + delta), h(x~))`` from ``x~ + 0.001 N(0, I)`` (DIR Eq. 4); detached.

        The released variant (``project_inner=false``) never projects the iterates.
        """
        with torch.no_grad():
            p_clean = F.softmax(target(x_tilde.detach()).float(), dim=1)
        return perturb(target, x_tilde, lambda logits: rep_loss(logits, p_clean), self.threat,
                       step_size=self.inner_step_size, steps=self.inner_steps, start="normal",
                       generator=generator, project=self.project_inner)

    def loss(self, denoiser: DIR, target: nn.Module, x, y, generator) -> StepResult:
        """Phase 2 (DIR Algorithm 1): ``L_den = L_adv + alpha * L_rep`` on x' crafted against the pipeline."""
        x_adv = self.attack(Pipeline(target, denoiser), x, y, generator)
        x_tilde = denoiser(x_adv)
        logits = target(x_tilde)
        loss = F.cross_entropy(logits.float(), y)
        if self.alpha and self.gradient_path == "released":
            with torch.no_grad():
                separate = denoiser(x_adv)
            perturbed = target(self.inner_maximisation(target, separate, generator))
            loss = loss + self.alpha * rep_loss(perturbed, F.softmax(target(denoiser(x_adv)).float(), dim=1))
        elif self.alpha:
            delta = self.inner_maximisation(target, x_tilde, generator) - x_tilde.detach()
            loss = loss + self.alpha * rep_loss(target(x_tilde + delta), F.softmax(logits.float(), dim=1))
        if self.mse_weight:
            loss = loss + self.mse_weight * F.mse_loss(x_tilde.float(), x.float())
        return StepResult(loss, logits)


def rep_loss(logits_perturbed: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """L_rep as the released code computes it: ``KLDivLoss(log_softmax(h(x~ + delta)), p(x~))`` / B (DIR Eq. 5)."""
    return F.kl_div(F.log_softmax(logits_perturbed.float(), dim=1), p_clean, reduction="sum") / len(p_clean)


@dataclass
class DIRTraining:
    """A checked ``robench train dir`` run: recipe, denoiser and target (built), data (loaded), schedules, outputs.

    Build it with :meth:`plan`, train it with :meth:`run`. Pre-training uses the main schedule's
    SGD settings (batch, lr, momentum, weight decay) for ``pretrain_epochs`` epochs without lr
    decay: [CHOICE] the paper names one optimiser (SGD, lr 1e-2) and none for pre-training; the
    released AdamW/cosine MAE recipe is not implemented. Each phase has its own resume file
    (``<stem>.pretrain.resume.pt``, ``<stem>.resume.pt``), so a rerun resumes at the phase and
    epoch where it stopped; phase 1 is seeded with ``seed``, phase 2 with ``seed + 1``.
    """

    recipe: DIRRecipe
    defense_spec: Spec
    target_spec: Spec
    dataset_spec: Spec
    denoiser: DIR
    target: nn.Module
    train: Examples
    held_out: Examples | None
    split: str
    sample_seed: int | None
    schedule: Schedule
    augment: str
    seed: int
    evaluation: Evaluation
    eval_eot: int
    output: Path

    @classmethod
    def plan(
        cls,
        recipe: "str | Spec",
        *,
        model: "str | Spec",
        target: "str | Spec | None",
        dataset: "str | Spec",
        output: "str | Path | None" = None,
        split: str = "train",
        n: int | None = None,
        sample_seed: int | None = None,
        seed: int = 0,
        augment: str | None = None,
        evaluation: Evaluation = Evaluation(),
        eval_eot: int | None = None,
        **schedule: object,
    ) -> "DIRTraining":
        """Build and check a DIR training run; every bad input fails here, before any epoch (DIR, ICML 2023).

        Args:
            recipe: ``dir`` with :class:`DIRRecipe` options, e.g. ``dir:alpha=1``.
            model: the denoiser's defense spec (``dir``, ``dir:mask_ratio=0.3``; ``weights=`` starts from a checkpoint).
            target: the fixed classifier's model spec, e.g. ``resnet18:weights=checkpoints/resnet18-at-cifar10.pt``.
            dataset: dataset spec of 3x32x32 images; ``split`` is trained on, ``evaluation.split`` held out.
            output: checkpoint path (default ``checkpoints/dir-<dataset>.pt``).
            n, sample_seed: the training subset (all of the split, the first n, or a seeded sample).
            seed: seeds shuffling, augmentation, masks and attacks (the denoiser's init is its ``init_seed``).
            augment: ``crop-flip``, ``crop`` or ``none`` (default by dataset), both phases.
            evaluation: the per-epoch held-out measurement of ``target(dir(x))``.
            eval_eot: EOT draws of its attack (default 10, as the dir2023 benchmarks).
            schedule: overrides of the main phase's :class:`Schedule` (epochs, batch_size, lr, ...).
        """
        recipe = build_recipe(recipe, recipes={DIRRecipe.name: DIRRecipe})
        if target is None:
            raise TrainingError(
                "robench train dir needs --target MODEL_SPEC, the fixed classifier the denoiser is trained in front "
                "of, e.g. --target resnet18:weights=checkpoints/resnet18-at-cifar10.pt (from robench train at)"
            )
        plan_schedule = recipe.schedule.with_overrides(**schedule)
        defense_spec, target_spec = _spec(model, "model"), _spec(target, "target")
        dataset_spec = _spec(dataset, "dataset")
        try:
            defense_class = registry.load("defenses", defense_spec.name)
        except registry.PluginError as err:
            raise TrainingError(f"--model {defense_spec}: {err}") from None
        if not issubclass(defense_class, DIR):
            raise TrainingError(f"robench train dir trains the dir denoiser; --model must be a dir spec "
                                f"(e.g. dir or dir:mask_ratio=0.3), got {str(defense_spec)!r}")
        eval_eot = EVAL_EOT if eval_eot is None else eval_eot
        if isinstance(eval_eot, bool) or not isinstance(eval_eot, int) or eval_eot < 1:
            raise TrainingError(f"--eval-eot must be a positive integer, got {eval_eot!r}")
        output = Path(output) if output else CHECKPOINT_DIR / f"dir-{dataset_spec.name}.pt"
        _check_writable(output)
        augment = augment or default_augmentation(dataset_spec.name)
        if augment not in AUGMENTATIONS:
            raise TrainingError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
        data = _build("datasets", dataset_spec)
        if tuple(data.image_shape) != IMAGE_SHAPE:
            raise TrainingError(f"DIR restores 3x32x32 images, but {str(dataset_spec)!r} images are "
                                f"{tuple(data.image_shape)}; train it on CIFAR-10 or SVHN")
        train = _load(data, dataset_spec, split, n, sample_seed)
        held_out = None
        if evaluation.n:
            held_out = _load(data, dataset_spec, evaluation.split, evaluation.n, None)
            _build("attacks", evaluation.attack)
        denoiser = _build("defenses", defense_spec)
        classifier = _build("models", target_spec)
        _check_fits(classifier, target_spec, data, dataset_spec)
        if not getattr(classifier, "checkpoints", None):
            raise TrainingError(
                f"target {str(target_spec)!r} loads no trained weights; DIR trains in front of a trained, fixed "
                "classifier: give its checkpoint, e.g. resnet18:weights=checkpoints/resnet18-at-cifar10.pt"
            )
        classifier.eval().requires_grad_(False)  # fixed: never in train mode, never updated
        return cls(recipe, defense_spec, target_spec, dataset_spec, denoiser, classifier, train, held_out, split,
                   sample_seed, plan_schedule, augment, seed, evaluation, eval_eot, output)

    @property
    def pretrain_schedule(self) -> Schedule | None:
        """Phase 1's schedule (None when ``pretrain_epochs=0``): the main SGD settings, no lr decay."""
        if not self.recipe.pretrain_epochs:
            return None
        return self.schedule.with_overrides(epochs=self.recipe.pretrain_epochs, milestones=())

    @property
    def card_path(self) -> Path:
        return self.output.with_suffix(".json")

    @property
    def resume_path(self) -> Path:
        """Phase 2's resume file (the one ``robench train`` names when interrupted)."""
        return self.output.with_suffix(".resume.pt")

    @property
    def pretrain_resume_path(self) -> Path:
        return self.output.with_suffix(".pretrain.resume.pt")

    @property
    def usable(self) -> Spec:
        """The defense spec that loads the trained checkpoint."""
        return Spec.of(self.defense_spec.name, **{**self.defense_spec.options, "weights": str(self.output)})

    def config(self, phase: str, runtime: Runtime) -> dict:
        """Everything that determines a phase's weights except its number of epochs (the resume file's identity)."""
        schedule = self.pretrain_schedule if phase == "pretrain" else self.schedule
        config = {
            "phase": phase,
            "defense": str(self.defense_spec),
            "target": {"spec": str(self.target_spec), "checkpoints": dict(getattr(self.target, "checkpoints", {}))},
            "data": {"dataset": str(self.dataset_spec), "split": self.split, "n": len(self.train),
                     "sample_seed": self.sample_seed, "fingerprint": self.train.fingerprint()},
            "schedule": {k: v for k, v in schedule.to_json().items() if k != "epochs"},
            "augment": self.augment,
            "seed": self.seed,
            "autocast": runtime.autocast,
            "channels_last": runtime.channels_last,
        }
        if phase == "pretrain":
            config["attack"] = {"eps": self.recipe.eps, "step_size": self.recipe.step_size, "steps": self.recipe.steps}
        else:
            config["recipe"] = str(self.recipe.spec)
        return config

    def evaluation_command(self) -> str:
        """The ``robench run`` command that measures the card's clean and robust accuracy the same way."""
        ev = self.evaluation
        dataset, model, defense, attack = (shlex.quote(str(spec)) for spec in
                                           (self.dataset_spec, self.target_spec, self.usable, ev.attack))
        return (f"robench run --dataset {dataset} --model {model} --defense {defense} --attack {attack} "
                f"--norm {ev.threat.norm} --eps {format_fraction(ev.threat.eps)} -n {ev.n} --seed {ev.seed} "
                f"--batch-size {ev.batch_size} --eot {self.eval_eot} --draws 1")

    def run(self, *, runtime: Runtime = Runtime(), command: str = "") -> dict:
        """Pre-train, then train the denoiser (resuming either phase), write checkpoint and card; returns the card."""
        began = time.perf_counter()
        denoiser, target, recipe = self.denoiser, self.target, self.recipe
        target.to(runtime.device)
        if runtime.channels_last:
            target.to(memory_format=torch.channels_last)
        evaluate = None
        if self.held_out is not None:
            pipeline = Pipeline(target, denoiser)
            attacker = EOT(pipeline, self.eval_eot) if self.eval_eot > 1 else pipeline

            def evaluate() -> dict:
                return robust_accuracy(pipeline, self.held_out, self.evaluation, runtime.device, attacker=attacker)

        common = dict(augment=self.augment, evaluate=evaluate, runtime=runtime)
        pretrain_history = []
        if self.pretrain_schedule is not None:
            pretrain_history = fit(
                denoiser, lambda x, y, generator: recipe.pretrain_loss(denoiser, target, x, y, generator),
                self.train.x, self.train.y, schedule=self.pretrain_schedule, seed=self.seed,
                resume_path=self.pretrain_resume_path, config=self.config("pretrain", runtime), **common,
            )
        history = fit(
            denoiser, lambda x, y, generator: recipe.loss(denoiser, target, x, y, generator),
            self.train.x, self.train.y, schedule=self.schedule, seed=self.seed + 1,
            resume_path=self.resume_path, config=self.config("main", runtime), **common,
        )
        state = {k: v.detach().cpu().contiguous() for k, v in denoiser.state_dict().items()}
        save_torch(state, self.output)
        sha256 = sha256_of(self.output)
        reloaded = registry.build("defenses", self.usable).state_dict()
        if reloaded.keys() != state.keys() or any(not torch.equal(reloaded[k], state[k]) for k in state):
            raise CheckpointError(f"{self.usable} does not load the trained weights back")
        card = self._card(pretrain_history, history, sha256, runtime, time.perf_counter() - began, command)
        save_json(card, self.card_path)
        return card

    def _card(self, pretrain_history, history, sha256, runtime, wall_s, command) -> dict:
        final = history[-1] if history else {}
        evaluation = None
        if self.held_out is not None:
            evaluation = {**self.evaluation.to_json(), "eot": self.eval_eot, "draws": 1,
                          "dataset": str(self.dataset_spec), "pipeline": f"{self.target_spec} behind {self.usable}",
                          "clean_acc": final.get("clean_acc"), "robust_acc": final.get("robust_acc"),
                          "command": self.evaluation_command()}
        environment_ = environment(runtime.device)
        histories = {"pretrain": pretrain_history, "main": history}
        return {
            "format": CARD_FORMAT,
            "checkpoint": {"file": self.output.name, "sha256": sha256, "bytes": self.output.stat().st_size},
            "defense": str(self.usable),
            "architecture": str(self.defense_spec),
            "recipe": {"name": self.recipe.name, "spec": str(self.recipe.spec),
                       "hyperparameters": self.recipe.hyperparameters},
            "target": {"spec": str(self.target_spec), "checkpoints": dict(getattr(self.target, "checkpoints", {}))},
            "schedule": {"pretrain": None if self.pretrain_schedule is None else self.pretrain_schedule.to_json(),
                         "main": self.schedule.to_json()},
            "augment": self.augment,
            "data": {"dataset": str(self.dataset_spec), "split": self.split, "n": len(self.train),
                     "sample_seed": self.sample_seed, "first_id": self.train.ids[0], "last_id": self.train.ids[-1],
                     "fingerprint": self.train.fingerprint()},
            "seed": self.seed,
            "epochs": {phase: len(records) for phase, records in histories.items()},
            "evaluation": evaluation,
            "history": histories,
            "training_s": round(sum(r["seconds"] for records in histories.values() for r in records), 3),
            "wall_s": round(wall_s, 3),
            "device": environment_["device"],
            "autocast": runtime.autocast,
            "channels_last": runtime.channels_last,
            "versions": {k: v for k, v in environment_.items() if k != "device"},
            "command": command or None,
        }
