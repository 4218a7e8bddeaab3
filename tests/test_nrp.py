"""NRP (Naseer et al. CVPR 2020, specs A4): both generators, the released layout, dynamic mode, training."""

from __future__ import annotations

import pytest
import torch

from robench import registry
from robench.checkpoint import CheckpointError, sha256_of
from robench.defenses.nrp.networks import ResGenerator, RRDBGenerator
from robench.defenses.nrp.trainer import NRPTraining
from robench.train import Evaluation, Runtime, TrainingError

SMALL = {"rrdb": "nrp:nf=8,nb=1,gc=4", "resg": "nrp:arch=resg,nf=8,nb=1"}


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_paper_sizes_have_the_parameter_counts_of_specs_a4():
    assert sum(p.numel() for p in RRDBGenerator().parameters()) == 16_550_275
    assert sum(p.numel() for p in ResGenerator().parameters()) == 1_702_211


def test_released_key_names():
    rrdb, resg = RRDBGenerator(nb=2).state_dict(), ResGenerator(nb=2).state_dict()
    assert {"conv_first.weight", "RRDB_trunk.1.RDB3.conv5.bias", "trunk_conv.weight"} <= set(rrdb)
    assert {"conv_first.weight", "recon_trunk.1.conv2.weight", "conv_last.bias"} <= set(resg)


@pytest.mark.parametrize("arch", ["rrdb", "resg"])
@pytest.mark.parametrize("size", [32, 299])
def test_shapes_range_and_gradient(arch, size):
    defense = registry.build("defenses", SMALL[arch])
    x = images(size, batch=1).requires_grad_(True)
    out = defense(x)
    assert out.shape == x.shape and 0 <= out.min().item() and out.max().item() <= 1
    out.sum().backward()
    assert x.grad.abs().sum().item() > 0


@pytest.mark.parametrize("arch", ["rrdb", "resg"])
def test_the_authors_layout_loads_key_for_key_and_enters_the_key(tmp_path, arch):
    source = registry.build("defenses", SMALL[arch] + ",init_seed=5")
    path = tmp_path / "NRP.pth"
    torch.save(source.generator.state_dict(), path)  # the released files hold the bare generator
    loaded = registry.build("defenses", f"{SMALL[arch]},weights={path}")
    x = images(32)
    assert torch.equal(loaded(x), source(x)) and loaded.checkpoints == {"NRP.pth": sha256_of(path)}
    other = registry.build("defenses", SMALL["resg" if arch == "rrdb" else "rrdb"]).generator.state_dict()
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        registry.build("defenses", f"{SMALL[arch]},weights={tmp_path / 'other.pth'}")


def test_dynamic_mode_is_stochastic_and_projected_as_purify_py():
    static = registry.build("defenses", SMALL["resg"])
    dynamic = registry.build("defenses", SMALL["resg"] + ",dynamic=true")
    x = images(32)
    assert static.stochastic is False and torch.equal(static(x), static(x))
    assert dynamic.stochastic is True and not torch.equal(dynamic(x), dynamic(x))
    torch.manual_seed(1)
    got = dynamic(x)
    torch.manual_seed(1)
    noisy = (x + 0.05 * torch.randn_like(x)).clamp(x - 16 / 255, x + 16 / 255).clamp(0, 1)
    assert torch.allclose(got, dynamic.generator(noisy).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("spec, mentions", [("nrp:arch=unet", "arch"), ("nrp:nb=0", "nb"), ("nrp:dynamic=2", "dynamic")])
def test_bad_options_are_named(spec, mentions):
    with pytest.raises(Exception, match=mentions):
        registry.build("defenses", spec)


def plan(tmp_path, name="nrp.pt", **options):
    options = {"model": SMALL["resg"], "dataset": "synthetic", "split": "test", "n": 8, "batch_size": 4,
               "epochs": 1, "evaluation": Evaluation(n=0), "output": tmp_path / name, **options}
    return NRPTraining.plan(options.pop("recipe", 'nrp:features="vgg16:pretrained=false",crop=16,ssp_steps=1,'
                                                  "discriminator_width=4"), **options)


def test_training_lowers_the_loss_writes_a_loadable_checkpoint_and_resumes_bit_identically(tmp_path):
    run = plan(tmp_path, epochs=3, lr=1e-3)
    card = run.run(runtime=Runtime(progress=False))
    losses = [record["train_loss"] for record in card["history"]["main"]]
    assert losses[-1] < losses[0]
    loaded = registry.build("defenses", f"{SMALL['resg']},weights={tmp_path / 'nrp.pt'}")
    assert torch.equal(loaded(images(32)), run.module(images(32)))
    plan(tmp_path, "resumed.pt", epochs=2, lr=1e-3).run(runtime=Runtime(progress=False))
    plan(tmp_path, "resumed.pt", epochs=3, lr=1e-3).run(runtime=Runtime(progress=False))
    straight, resumed = (torch.load(tmp_path / f, weights_only=True) for f in ("nrp.pt", "resumed.pt"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_paper_structure_defaults_and_bad_recipes(tmp_path):
    recipe = NRPTraining.recipe_class()
    assert (recipe.feature, recipe.pixel, recipe.adversarial) == (1.0, 1e-2, 5e-3)
    assert recipe.eps == pytest.approx(16 / 255)
    with pytest.raises(TrainingError, match="crop"):
        plan(tmp_path, recipe='nrp:features="vgg16:pretrained=false",crop=64').phases()
    with pytest.raises(TrainingError, match="adversarial"):
        plan(tmp_path, recipe="nrp:adversarial=-1")
