"""``robench train dir``: DIR's pre-training (Eq. 2) and main training (Algorithm 1) in front of a fixed target.

Zhou et al., "Eliminating Adversarial Noise via Information Discard and Robust Representation
Restoration", ICML 2023 (specs A1). The ``dir`` defense names this module as its ``trainer``;
``robench train dir --model DIR_SPEC --target MODEL_SPEC --dataset D`` plans a run with
:meth:`DIRTraining.plan` (every bad input fails there) and trains it with :meth:`DIRTraining.run`,
both from the trainer base :class:`robench.train.DefenseTrainer`; this module adds DIR's losses,
its two phases and their schedules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses.dir import DIR, IMAGE_SHAPE
from robench.hyper import check_positive, check_positive_int
from robench.spec import Spec, parse_eps
from robench.target import Pipeline
from robench.threat import ThreatModel
from robench.train.inner import evaluating, perturb
from robench.train.loop import Schedule, StepResult, TrainingError
from robench.train.recipes import Recipe
from robench.train.trainer import DefenseTrainer, Phase

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


class DIRTraining(DefenseTrainer):
    """A checked ``robench train dir`` run: the denoiser trained in front of a fixed target, in two phases.

    Build it with :meth:`plan`, train it with :meth:`run` (both from :class:`DefenseTrainer`).
    Pre-training uses the main schedule's SGD settings (batch, lr, momentum, weight decay) for
    ``pretrain_epochs`` epochs without lr decay: [CHOICE] the paper names one optimiser (SGD, lr
    1e-2) and none for pre-training; the released AdamW/cosine MAE recipe is not implemented. Each
    phase has its own resume file (``<stem>.pretrain.resume.pt``, ``<stem>.resume.pt``), so a rerun
    resumes at the phase and epoch where it stopped; phase 1 is seeded with ``seed``, phase 2 with
    ``seed + 1``. Evaluation attacks use ``EVAL_EOT`` draws unless ``--eval-eot`` says otherwise.
    """

    trains = DIR
    recipe_class = DIRRecipe
    default_eval_eot = EVAL_EOT

    @property
    def denoiser(self) -> DIR:
        return self.module

    @classmethod
    def check_data(cls, data, dataset_spec: Spec) -> None:
        if tuple(data.image_shape) != IMAGE_SHAPE:
            raise TrainingError(f"DIR restores 3x32x32 images, but {str(dataset_spec)!r} images are "
                                f"{tuple(data.image_shape)}; train it on CIFAR-10 or SVHN")

    def phases(self) -> list[Phase]:
        """Pre-training (Eq. 2; skipped when ``pretrain_epochs=0``), then main training (Algorithm 1)."""
        recipe, denoiser, target = self.recipe, self.module, self.target
        pretrain = None
        if recipe.pretrain_epochs:
            pretrain = self.schedule.with_overrides(epochs=recipe.pretrain_epochs, milestones=())
        return [
            Phase("pretrain", pretrain, lambda x, y, generator: recipe.pretrain_loss(denoiser, target, x, y, generator),
                  seed=self.seed,
                  config={"attack": {"eps": recipe.eps, "step_size": recipe.step_size, "steps": recipe.steps}}),
            Phase("main", self.schedule, lambda x, y, generator: recipe.loss(denoiser, target, x, y, generator),
                  seed=self.seed + 1, config={"recipe": str(recipe.spec)}),
        ]
