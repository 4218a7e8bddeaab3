"""Training: the shared loop (:func:`fit`) and the target-model recipes behind ``robench train``.

A learned defense's trainer reuses :func:`fit` with its own module and per-batch loss, the
inner maximisation :func:`perturb`, and :func:`robust_accuracy` as its evaluation hook.
"""

from robench.train.evaluate import Evaluation, robust_accuracy
from robench.train.inner import evaluating, perturb
from robench.train.loop import Runtime, Schedule, StepResult, TrainingError, fit
from robench.train.recipes import RECIPES, Recipe, build_recipe
from robench.train.targets import TrainingPlan, plan_training, train_target

__all__ = [
    "Evaluation", "RECIPES", "Recipe", "Runtime", "Schedule", "StepResult", "TrainingError", "TrainingPlan",
    "build_recipe", "evaluating", "fit", "perturb", "plan_training", "robust_accuracy", "train_target",
]
