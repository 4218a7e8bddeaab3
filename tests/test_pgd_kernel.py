"""robench.pgd_kernel: the one PGD iteration every projected-gradient loop in robench calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks

from robench import registry
from robench.pgd_kernel import L2_GUARD, NORMAL_START_STD, ascend, direction, random_start, step
from robench.threat import ThreatModel

LINF = ThreatModel("Linf", 8 / 255)
L2 = ThreatModel("L2", 0.5)
THREATS = [LINF, L2]


@pytest.fixture(scope="module")
def tiny():
    """The weight-free tiny model and 16 synthetic images it classifies into 4 classes."""
    model = registry.build("models", "tiny:size=8,num_classes=4").eval()
    data = registry.build("datasets", "synthetic:image_size=8,num_classes=4,size=16").load(n=16)
    return model, data.x, data.y


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_uniform_start_lies_inside_the_ball_and_the_box_and_moves(threat):
    x = _images()
    start = random_start(x, threat, "uniform", generator=torch.Generator().manual_seed(1))
    assert (threat.violation(start, x) <= threat.tolerance).all()
    assert (threat.distance(start, x) > 0).all()
    if threat.norm == "L2":  # PGDL2's radius is uniform in [0, eps]: the starts spread across the ball
        assert threat.distance(start, x).max() > threat.eps / 2


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_a_generator_reproduces_the_start_and_none_means_the_global_one(threat):
    x = _images()
    first, again = (random_start(x, threat, "uniform", generator=torch.Generator().manual_seed(2)) for _ in range(2))
    assert torch.equal(first, again)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        from_global = random_start(x, threat, "uniform")
    assert torch.equal(from_global, first)


def test_normal_start_is_a_small_unclamped_gaussian_and_none_is_x():
    x = torch.ones(64, 3, 8, 8)  # every pixel at the top of the box
    start = random_start(x, LINF, "normal", generator=torch.Generator().manual_seed(0))
    noise = start - x
    assert start.max() > 1, "the normal start is not clamped (TRADES, MART, DIR)"
    assert noise.std().item() == pytest.approx(NORMAL_START_STD, rel=0.05)
    assert torch.equal(random_start(x, LINF, "none"), x)


def test_an_unknown_start_names_the_choices():
    with pytest.raises(ValueError, match="unknown start 'gaussian'; choose one of none, uniform, normal"):
        random_start(_images(), LINF, "gaussian")


def test_linf_direction_is_the_sign_and_l2_direction_has_unit_norm():
    grad = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(direction(grad, "Linf"), grad.sign())
    unit = direction(grad, "L2")
    assert torch.allclose(unit.flatten(1).norm(dim=1), torch.ones(4), atol=1e-6)
    cosine = F.cosine_similarity(unit.flatten(1), grad.flatten(1), dim=1)
    assert torch.allclose(cosine, torch.ones(4), atol=1e-6)


def test_the_l2_guard_turns_a_zero_gradient_into_a_zero_step():
    grad = torch.zeros(2, 3, 8, 8)
    grad[1] = 1.0
    moved = direction(grad, "L2")
    assert torch.isfinite(moved).all()
    assert torch.equal(moved[0], torch.zeros(3, 8, 8))
    x = _images()[:2]
    assert torch.equal(step(x, x, grad, L2, 0.1)[0], x[0])
    assert L2_GUARD > 0


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_step_ascends_along_the_direction_then_projects_onto_ball_and_box(threat):
    x = _images()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    small = 1e-3
    inner = x.clamp(0.25, 0.75)  # far from the box and from the ball's edge: no projection acts
    assert torch.allclose(step(inner, inner, grad, threat, small), inner + small * direction(grad, threat.norm),
                          atol=1e-7)
    far = step(x, x, grad, threat, 10.0)  # a step far outside the ball, and outside [0, 1] for pixels near its ends
    assert (threat.violation(far, x) <= threat.tolerance).all()
    on_edge = step(inner, inner, grad, threat, 10.0)  # the box cuts nothing: the projection lands on the sphere
    assert torch.allclose(threat.distance(on_edge, inner), torch.full((len(x),), threat.eps), rtol=1e-5)
    unprojected = step(x, x, grad, threat, 10.0, project=False)
    assert (threat.violation(unprojected, x) > 1).all(), "project=False leaves the iterate where the step put it"


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_ascend_equals_torchattacks_pgd_draw_for_draw(tiny, threat):
    model, x, y = tiny
    alpha = 2 / 255 if threat.norm == "Linf" else threat.eps / 5
    torch.manual_seed(5)
    ours = ascend(lambda a: F.cross_entropy(model(a), y), x, threat, steps=5, step_size=alpha)
    torch.manual_seed(5)
    cls = torchattacks.PGD if threat.norm == "Linf" else torchattacks.PGDL2
    reference = cls(model, eps=threat.eps, alpha=alpha, steps=5)(x, y)
    # The same operations in the same order: equal up to float noise (bit for bit on one machine).
    assert torch.allclose(ours, reference, atol=1e-6)
    assert torch.equal(model(ours).argmax(1), model(reference).argmax(1))


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_pgd_own_loop_equals_the_torchattacks_path_on_a_fixed_seed(tiny, threat):
    model, x, y = tiny
    torchattacks_path = registry.build("attacks", "pgd:steps=5")
    own_loop = registry.build("attacks", "pgd:steps=5,channels_last=true")  # any speed option runs the kernel loop
    assert own_loop.native("cpu") and not torchattacks_path.native("cpu")
    x4 = x.contiguous()
    assert torch.allclose(own_loop(model, x4, y, threat, seed=6), torchattacks_path(model, x4, y, threat, seed=6),
                          atol=1e-6)


def test_ascend_raises_the_loss_and_can_skip_projection(tiny):
    model, x, y = tiny

    def loss_of(a):
        return F.cross_entropy(model(a), y)

    torch.manual_seed(0)
    x_adv = ascend(loss_of, x, LINF, steps=5, step_size=2 / 255, start="none")
    with torch.no_grad():
        assert loss_of(x_adv) > loss_of(x)
    assert not x_adv.requires_grad
    free = ascend(loss_of, x, LINF, steps=10, step_size=2 / 255, start="none", project=False)
    assert (LINF.distance(free, x) > LINF.eps).any(), "10 unprojected steps of 2/255 leave an 8/255 ball"


def test_noise_image_start_is_a_projected_gaussian_image_drawn_like_ssp():
    threat = ThreatModel("Linf", 16 / 255)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    start = random_start(x, threat, "noise-image", generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(start, threat.project(noise, x))
    assert (threat.violation(start, x) <= 1e-6).all() and (start - x).abs().max().item() > 8 / 255
