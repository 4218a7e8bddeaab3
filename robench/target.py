"""Targets: a classifier behind a defense, and the views attacks see of it (BPDA, EOT, ensembles)."""

from __future__ import annotations

import torch
from torch import nn

from robench.defense import Defense, gradient_view


class Pipeline(nn.Module):
    """``model(defense(x))``: the defended classifier as it is scored."""

    def __init__(self, model: nn.Module, defense: nn.Module):
        super().__init__()
        self.model = model
        self.defense = defense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.defense(x))


class EOT(nn.Module):
    """Expectation over transformation (Athalye et al., ICML 2018): mean logits over ``draws`` draws.

    The draws run as one batch of ``draws * B`` images, so a stochastic defense sees independent
    randomness per copy; the gradient of the mean logits is the mean of the per-draw gradients.
    """

    def __init__(self, module: nn.Module, draws: int):
        super().__init__()
        if draws < 1:
            raise ValueError(f"EOT needs draws >= 1, got {draws}")
        self.module = module
        self.draws = draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.draws == 1:
            return self.module(x)
        logits = self.module(x.repeat(self.draws, *([1] * (x.dim() - 1))))
        return logits.view(self.draws, x.shape[0], *logits.shape[1:]).mean(dim=0)


def split_eot(model: nn.Module) -> tuple[nn.Module, int]:
    """The module inside an EOT view and its number of draws (the model itself and 1 otherwise)."""
    return (model.module, model.draws) if isinstance(model, EOT) else (model, 1)


class Ensemble(nn.Module):
    """Mean logits of several classifiers, the usual ensemble source of transfer attacks."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def adaptive_view(model: nn.Module, defense: Defense, *, eot_draws: int = 1) -> nn.Module:
    """The whole pipeline as an adaptive attacker differentiates it: BPDA where needed, EOT where random."""
    view = Pipeline(model, gradient_view(defense))
    view = EOT(view, eot_draws) if defense.stochastic and eot_draws > 1 else view
    return view.train(model.training)
