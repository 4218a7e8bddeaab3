"""ThreatModel: projection, distance, violation and check for Linf and L2 balls inside [0, 1]."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from robench.spec import SpecError
from robench.threat import ThreatModel, ThreatModelViolation

THREATS = [ThreatModel("Linf", 8 / 255), ThreatModel("L2", 0.5)]
IDS = ["Linf", "L2"]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g)
    x_adv = (x + torch.randn(16, 3, 8, 8, generator=g) * 0.3).clamp(-0.5, 1.5)  # far outside ball and bounds
    return x, x_adv


def _inside(threat: ThreatModel, x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A point strictly inside the ball and the bounds (half the budget, away from the edges)."""
    g = torch.Generator().manual_seed(seed)
    x = x.clamp(0.1, 0.9)
    delta = torch.randn(x.shape, generator=g)
    if threat.norm == "Linf":
        delta = delta.sign() * threat.eps / 2
    else:
        delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * threat.eps / 2
    return x + delta


# --- project ----------------------------------------------------------------------------------


@pytest.mark.parametrize("threat", THREATS, ids=IDS)
def test_project_lands_inside_ball_and_bounds(threat, batch):
    x, x_adv = batch
    assert (threat.distance(x_adv, x) > threat.eps).all()  # the fixture really is outside
    p = threat.project(x_adv, x)
    assert p.shape == x.shape and p.dtype == x.dtype
    assert (threat.distance(p, x) <= threat.eps * (1 + 1e-6)).all()
    assert p.min() >= 0 and p.max() <= 1
    assert (threat.violation(p, x) <= 1e-6).all()
    threat.check(p, x)


@pytest.mark.parametrize("threat", THREATS, ids=IDS)
def test_project_is_idempotent(threat, batch):
    x, x_adv = batch
    p = threat.project(x_adv, x)
    assert torch.allclose(threat.project(p, x), p, atol=1e-7, rtol=0)


@pytest.mark.parametrize("threat", THREATS, ids=IDS)
def test_project_leaves_inside_points_unchanged(threat, batch):
    x, _ = batch
    x = x.clamp(0.1, 0.9)
    inside = _inside(threat, x)
    assert (threat.violation(inside, x) == 0).all()
    assert torch.allclose(threat.project(inside, x), inside, atol=1e-7, rtol=0)
    assert torch.equal(threat.project(x, x), x)


def test_linf_project_is_the_clamp_formula(batch):
    x, x_adv = batch
    threat = ThreatModel("Linf", 8 / 255)
    expected = torch.min(torch.max(x_adv, x - threat.eps), x + threat.eps).clamp(0, 1)
    assert torch.allclose(threat.project(x_adv, x), expected, atol=1e-7, rtol=0)


def test_linf_project_is_the_nearest_feasible_point(batch):
    x, x_adv = batch
    threat = ThreatModel("Linf", 8 / 255)
    p = threat.project(x_adv, x)
    best = (p - x_adv).flatten(1).norm(dim=1)
    g = torch.Generator().manual_seed(3)
    for _ in range(20):  # random feasible points are never closer
        q = threat.project(x + (torch.rand(x.shape, generator=g) * 2 - 1) * threat.eps, x)
        assert ((q - x_adv).flatten(1).norm(dim=1) >= best - 1e-6).all()


def test_l2_project_scales_onto_the_sphere_when_bounds_are_inactive():
    threat = ThreatModel("L2", 0.5)
    x = torch.full((4, 3, 8, 8), 0.5)
    direction = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x_adv = x + 2 * threat.eps * direction  # entries stay well inside [0, 1]
    p = threat.project(x_adv, x)
    assert torch.allclose(threat.distance(p, x), torch.full((4,), threat.eps), atol=1e-6)
    assert torch.allclose(p - x, threat.eps * direction, atol=1e-6)


def test_project_respects_custom_bounds():
    threat = ThreatModel("Linf", 0.5, bounds=(0.2, 0.8))
    x = torch.full((1, 1, 2, 2), 0.5)
    p = threat.project(torch.tensor([[[[0.0, 1.0], [0.4, 0.6]]]]), x)
    assert torch.equal(p, torch.tensor([[[[0.2, 0.8], [0.4, 0.6]]]]))


# --- distance ---------------------------------------------------------------------------------


def test_distance_values():
    x = torch.zeros(2, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0], x_adv[0, 0, 1, 1] = 0.3, -0.1
    x_adv[1, 0, 0, 1] = 0.2
    linf = ThreatModel("Linf", 8 / 255).distance(x_adv, x)
    l2 = ThreatModel("L2", 0.5).distance(x_adv, x)
    assert linf.shape == (2,) and l2.shape == (2,)
    assert torch.allclose(linf, torch.tensor([0.3, 0.2]))
    assert torch.allclose(l2, torch.tensor([math.sqrt(0.1), 0.2]))


def test_distance_is_zero_for_identical_inputs(batch):
    x, _ = batch
    for threat in THREATS:
        assert torch.equal(threat.distance(x, x), torch.zeros(len(x)))


# --- violation --------------------------------------------------------------------------------


@pytest.mark.parametrize("threat", THREATS, ids=IDS)
def test_violation_is_zero_inside(threat, batch):
    x, _ = batch
    x = x.clamp(0.1, 0.9)
    v = threat.violation(_inside(threat, x), x)
    assert v.shape == (len(x),)
    assert torch.equal(v, torch.zeros(len(x)))


def test_violation_measures_excess_over_eps_per_example():
    threat = ThreatModel("Linf", 8 / 255)
    x = torch.full((3, 1, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[1, 0, 2, 2] += 10 / 255
    x_adv[2, 0, 0, 0] -= 8 / 255  # exactly on the boundary
    v = threat.violation(x_adv, x)
    assert v[0] == 0 and v[2] <= 1e-7
    assert v[1] == pytest.approx(2 / 255, abs=1e-6)


def test_violation_l2_excess():
    threat = ThreatModel("L2", 0.5)
    x = torch.full((2, 1, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[1, 0, :2, 0] += 0.3  # norm 0.3 * sqrt(2) = 0.424 < 0.5
    x_adv[0, 0, 0, :] += 0.4  # norm 0.8
    v = threat.violation(x_adv, x)
    assert v[1] == 0
    assert v[0] == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("threat", THREATS, ids=IDS)
def test_violation_detects_out_of_bounds_pixels(threat):
    x = torch.full((2, 1, 4, 4), 0.5)
    x[:, 0, 0, 0] = 1.0
    x[:, 0, 3, 3] = 0.0
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = 1.0 + 1 / 255  # inside the ball, above the bounds
    x_adv[1, 0, 3, 3] = -2 / 255  # inside the ball, below the bounds
    v = threat.violation(x_adv, x)
    assert v[0] == pytest.approx(1 / 255, abs=1e-6)
    assert v[1] == pytest.approx(2 / 255, abs=1e-6)


@pytest.mark.parametrize("threat", THREATS, ids=IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_violation_detects_non_finite_values(threat, bad):
    x = torch.full((3, 1, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[1, 0, 1, 1] = bad
    v = threat.violation(x_adv, x)
    assert not torch.isnan(v).any()
    assert v[1] > 1 and v[0] == 0 and v[2] == 0
    with pytest.raises(ThreatModelViolation, match="1 of 3"):
        threat.check(x_adv, x)


# --- check ------------------------------------------------------------------------------------


def test_check_names_count_and_worst_excess():
    threat = ThreatModel("Linf", 8 / 255)
    x = torch.full((5, 1, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[1, 0, 0, 0] += 8 / 255 + 0.05
    x_adv[3, 0, 0, 0] -= 8 / 255 + 0.1
    with pytest.raises(ThreatModelViolation) as info:
        threat.check(x_adv, x)
    message = str(info.value)
    assert "2 of 5" in message
    worst = re.search(r"worst excess ([0-9.e+-]+)", message)
    assert worst and float(worst.group(1)) == pytest.approx(0.1, rel=1e-2), message
    assert "Linf 8/255" in message
    assert "index 1" in message


@pytest.mark.parametrize("threat", THREATS, ids=IDS)
def test_check_tolerates_float_rounding(threat):
    x = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)
    delta = torch.ones_like(x)
    if threat.norm == "Linf":
        delta = delta * (threat.eps + 1e-7)
    else:
        delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * (threat.eps + 1e-7)
    x_adv = x + delta
    assert (threat.violation(x_adv, x) > 0).all()  # measurably outside ...
    threat.check(x_adv, x)  # ... but within rounding: no error
    threat.check(x_adv.float(), x.float())


@pytest.mark.parametrize("threat", THREATS, ids=IDS)
def test_check_rejects_a_clear_violation(threat):
    x = torch.full((2, 3, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[0] += threat.eps  # Linf: exactly eps; L2: sqrt(48) * eps
    x_adv[0, 0, 0, 0] += 1e-3
    with pytest.raises(ThreatModelViolation, match="1 of 2"):
        threat.check(x_adv, x)


def test_check_does_not_modify_input():
    threat = ThreatModel("Linf", 8 / 255)
    x = torch.full((2, 1, 4, 4), 0.5)
    x_adv = x + 0.5
    before = x_adv.clone()
    with pytest.raises(ThreatModelViolation):
        threat.check(x_adv, x)
    assert torch.equal(x_adv, before)


def test_check_rejects_shape_mismatch():
    threat = ThreatModel("Linf", 8 / 255)
    with pytest.raises(ThreatModelViolation, match="shape"):
        threat.check(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["L1", "Linfinity", "", "inf"])
def test_invalid_norm(norm):
    with pytest.raises(SpecError, match="norm"):
        ThreatModel(norm, 8 / 255)


@pytest.mark.parametrize("norm, canonical", [("linf", "Linf"), ("LINF", "Linf"), ("l2", "L2"), (" L2 ", "L2")])
def test_norms_are_read_in_any_case(norm, canonical):
    assert ThreatModel(norm, 8 / 255).norm == canonical


@pytest.mark.parametrize("norm, eps", [("Linf", 0), ("Linf", -8 / 255), ("Linf", 2.0), ("Linf", float("nan")),
                                       ("L2", 0.0), ("L2", float("inf")), ("Linf", "8/0"), ("L2", "abc")])
def test_invalid_eps(norm, eps):
    with pytest.raises(SpecError):
        ThreatModel(norm, eps)


def test_invalid_bounds():
    with pytest.raises(SpecError, match="bounds"):
        ThreatModel("Linf", 8 / 255, bounds=(1.0, 0.0))


def test_eps_strings_and_str():
    threat = ThreatModel("Linf", "8/255")
    assert threat.eps == 8 / 255
    assert str(threat) == "Linf 8/255"
    assert str(ThreatModel("Linf", 8 / 255)) == "Linf 8/255"
    assert str(ThreatModel("Linf", "4/255")) == "Linf 4/255"
    assert str(ThreatModel("L2", "0.5/255")) == "L2 0.5/255"
    assert ThreatModel("L2", "2.0").eps == 2.0
    assert ThreatModel("Linf", "8/255") == threat


def test_str_l2_decimal_eps():
    assert str(ThreatModel("L2", 0.5)) == "L2 0.5"


def test_threat_model_is_frozen_and_hashable():
    threat = ThreatModel("Linf", 8 / 255)
    with pytest.raises(dataclasses.FrozenInstanceError):
        threat.eps = 1.0
    assert hash(threat) == hash(ThreatModel("Linf", "8/255"))
    assert threat != ThreatModel("L2", 8 / 255)
    assert threat.to_json() == {"norm": "Linf", "eps": 8 / 255, "bounds": [0.0, 1.0]}
