"""Every learned defense's ``weights=`` refuses a checkpoint that runs code on load, and its ``init_seed`` is checked."""

from __future__ import annotations

import pytest
import torch

from robench import registry
from robench.spec import parse_spec
from tests.hostile import files

# small constructions of each learned defense (the checkpoint is refused before it is matched to them)
LEARNED = {
    "dir": "dir:encoder_depth=1,decoder_depth=1,embed_dim=48,num_heads=3",
    "rdp": "rdp:width=16,blocks=2",
    "nrp": "nrp:arch=resg,nf=8,nb=2",
    "hgd": "hgd:input_size=32,width=8",
    "jatp": "jatp:width=8",
    "sr": "sr:n_feats=8,n_resblocks=2",
    "ape-gan": "ape-gan:width=8",
    "ebm": "ebm:width=4",
}


def test_every_learned_defense_is_covered():
    learned = {name for name in registry.names("defenses")
               if getattr(registry.load("defenses", name), "needs_training", False) and name != "comdefend"}
    assert learned == set(LEARNED), "add the new learned defense to LEARNED (comdefend has its own format tests)"


@pytest.mark.parametrize("name", sorted(LEARNED))
@pytest.mark.parametrize("writer", [files.pickle_checkpoint, files.raw_pickle, files.pickle_in_renamed_zip])
def test_a_checkpoint_that_runs_code_is_refused_and_runs_nothing(tmp_path, name, writer):
    marker = tmp_path / "ran"
    path = writer(tmp_path / "evil.pt", marker)
    with pytest.raises((registry.PluginError, ValueError, OSError), match="(?i)safely|weights_only|cannot be loaded"):
        registry.build("defenses", f"{LEARNED[name]},weights={path}")
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(LEARNED) + ["comdefend"])
@pytest.mark.parametrize("seed", [-1, True, 1.5])
def test_a_bad_init_seed_is_named(name, seed):
    cls = registry.load("defenses", name)
    options = dict(parse_spec(LEARNED[name]).options) if name in LEARNED else {}
    with pytest.raises(ValueError, match=r"init_seed must be an integer >= 0, got "):
        cls(**options, init_seed=seed)


def test_the_same_init_seed_builds_the_same_network_and_leaves_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    first, second = (registry.build("defenses", f"{LEARNED['hgd']},init_seed=3") for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
