"""Training: the shared loop (:func:`fit`), the target-model recipes and the learned-defense trainer base.

A learned defense's trainer subclasses :class:`DefenseTrainer` and adds only its losses (a
:class:`Recipe`) and its phases (:class:`Phase`); the base owns checks, paths, resume, checkpoint and card.
"""

from robench.train.evaluate import Evaluation, robust_accuracy
from robench.train.inner import evaluating, perturb
from robench.train.loop import Runtime, Schedule, StepResult, TrainingError, fit
from robench.train.recipes import RECIPES, Recipe, build_recipe
from robench.train.targets import TrainingPlan, plan_training, train_target
from robench.train.trainer import DefenseTrainer, Phase

__all__ = [
    "DefenseTrainer", "Evaluation", "Phase", "RECIPES", "Recipe", "Runtime", "Schedule", "StepResult",
    "TrainingError", "TrainingPlan", "build_recipe", "evaluating", "fit", "perturb", "plan_training", "robust_accuracy", "train_target",
]
