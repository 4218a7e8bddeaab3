"""The Attack base class's boundary: the public call is final, checks the raw output, projects only rounding."""

from __future__ import annotations

import pytest
import torch

from robench.attack import Attack
from robench.cell import Cell
from robench.resolve import Resolver
from robench.runner import run_grid
from robench.store import Store
from robench.threat import ThreatModel, ThreatModelViolation

LINF = ThreatModel("Linf", 8 / 255)
L2 = ThreatModel("L2", 0.5)


class Returns(Attack):
    """Returns ``x + offset`` (clamped to [0, 1]) whatever the model."""

    def __init__(self, *, offset: float = 0.0):
        self.offset = offset

    def run(self, model, x, y, threat):
        return (x + self.offset).clamp(0, 1)


def _batch():
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(0.2, 0.8)
    return x, torch.zeros(6, dtype=torch.long)


def test_a_subclass_cannot_override_the_public_call():
    with pytest.raises(TypeError, match="defines __call__.*implement run"):
        class Bypass(Attack):  # noqa: F841 - defining it is the failure
            def __call__(self, model, x, y, threat, *, seed=None):
                return x


@pytest.mark.parametrize("threat", [LINF, L2], ids=str)
def test_an_output_outside_the_ball_raises_naming_the_attack_and_the_distance(threat):
    x, y = _batch()
    with pytest.raises(ThreatModelViolation) as info:
        Returns(offset=0.1)(torch.nn.Identity(), x, y, threat)
    message = str(info.value)
    assert message.startswith("attack Returns returned 6 of 6 adversarial examples that leave the")
    assert f"{threat.norm} distance" in message and "worst excess" in message


def test_an_output_outside_the_box_raises():
    class Overshoots(Attack):
        def run(self, model, x, y, threat):
            return x + 1e-3  # inside the ball, above 1 where x is near 1

    x = torch.full((2, 3, 4, 4), 0.9995)
    with pytest.raises(ThreatModelViolation, match="pixels in"):
        Overshoots()(torch.nn.Identity(), x, torch.zeros(2, dtype=torch.long), LINF)


@pytest.mark.parametrize("threat", [LINF, L2], ids=str)
def test_rounding_past_the_budget_is_projected_not_refused(threat):
    x, y = _batch()
    rounding = threat.tolerance / 2
    if threat.norm == "Linf":
        offset = threat.eps + rounding
    else:
        offset = (threat.eps + rounding) / x[0].numel() ** 0.5
    raw = (x + offset).clamp(0, 1)
    assert (threat.violation(raw, x) > threat.tolerance / 4).all()
    x_adv = Returns(offset=offset)(torch.nn.Identity(), x, y, threat)
    assert (threat.violation(x_adv, x) <= threat.tolerance / 4).all(), "the rounding is projected away"
    assert torch.allclose(x_adv, raw, atol=threat.tolerance, rtol=0), "and nothing more moves"


def test_the_runner_records_a_violation_as_the_cells_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(Resolver, "_attack", lambda self, spec: Returns(offset=0.5))
    cell = Cell(dataset="synthetic:image_size=8,num_classes=4", model="tiny:size=8,num_classes=4", defense="none",
                attack="pgd", threat=LINF, n=8, batch_size=8)
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid([cell], store, benchmark="t", device=torch.device("cpu"), progress=False)
        (key, message), = result.failed.items()
        assert message.startswith("ThreatModelViolation: attack Returns returned")
        stored = store.cell(key)
    assert stored.status == "error" and "leave the Linf 8/255 threat model" in stored.error
