"""BPDA, EOT and pipeline views: values of the real defense, gradients of the surrogate."""

from __future__ import annotations

import pytest
import torch

from robench.defense import BPDA, Defense, DefenseInputError, gradient_view
from robench.target import EOT, Ensemble, Pipeline, adaptive_view


class Squash(Defense):
    """Non-differentiable defense with a known value and a known surrogate (x / 2)."""

    differentiable = False

    def purify(self, x):
        return torch.round(x * 4) / 4

    def surrogate(self, x):
        return x / 2


class Noise(Defense):
    """Stochastic, differentiable: adds uniform noise and clamps."""

    stochastic = True

    def purify(self, x):
        return (x + 0.1 * torch.rand_like(x)).clamp(0, 1)


def test_bpda_returns_the_real_value_and_the_surrogate_gradient():
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    out = BPDA(Squash())(x)
    assert torch.equal(out, torch.round(x.detach() * 4) / 4)
    out.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.5))


def test_bpda_rejects_a_surrogate_of_the_wrong_shape():
    class Bad(Squash):
        def surrogate(self, x):
            return x[:, :, :2]

    with pytest.raises(RuntimeError, match="must match for BPDA"):
        BPDA(Bad())(torch.rand(1, 1, 4, 4))


def test_gradient_view_uses_bpda_only_for_non_differentiable_defenses():
    assert isinstance(gradient_view(Squash()), BPDA)
    noise = Noise()
    assert gradient_view(noise) is noise


def test_eot_averages_logits_over_independent_draws():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    pipeline = Pipeline(model, Noise())
    x = torch.rand(2, 1, 4, 4)
    torch.manual_seed(1)
    averaged = EOT(pipeline, 5)(x)
    torch.manual_seed(1)
    draws = pipeline(x.repeat(5, 1, 1, 1)).view(5, 2, 3)
    assert torch.allclose(averaged, draws.mean(0))
    assert not torch.allclose(draws[0], draws[1]), "the draws must differ for a stochastic defense"


def test_eot_gradient_is_the_mean_of_per_draw_gradients():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    torch.manual_seed(3)
    EOT(Pipeline(model, Noise()), 4)(x)[:, 0].sum().backward()
    # the noise is additive, so each draw's input gradient is the same linear map: the mean equals it
    expected = model[1].weight[0].view(1, 1, 4, 4).expand_as(x)
    inside = (x + 0.1 > 0) & (x < 0.9)  # where no clamp can bite in any draw
    assert torch.allclose(x.grad[inside], expected[inside], atol=1e-6)


def test_adaptive_view_combines_bpda_and_eot_by_declared_attributes():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    assert isinstance(adaptive_view(model, Noise(), eot_draws=4), EOT)
    assert isinstance(adaptive_view(model, Noise(), eot_draws=1), Pipeline)
    view = adaptive_view(model, Squash(), eot_draws=4)
    assert isinstance(view, Pipeline) and isinstance(view.defense, BPDA)


def test_views_keep_the_wrapped_model_in_eval_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3)).eval()
    adaptive_view(model, Noise(), eot_draws=2)
    assert not model.training


def test_ensemble_averages_member_logits():
    a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    x = torch.rand(3, 4)
    assert torch.allclose(Ensemble([a, b])(x), (a(x) + b(x)) / 2)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(3, 4, 4), "shaped"),
        (torch.randint(0, 255, (1, 3, 4, 4), dtype=torch.uint8), "float"),
        (torch.rand(1, 3, 4, 4) * 2, r"\[0, 1\]"),
    ],
)
def test_defenses_reject_inputs_that_are_not_images_in_the_unit_range(bad, message):
    with pytest.raises(DefenseInputError, match=message):
        Noise()(bad)
