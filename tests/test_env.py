"""Provenance names the machine: attack trajectories depend on the processor's and the BLAS build's rounding."""

from __future__ import annotations

import pytest
import torch

from robench.env import batch_seed, blas_build, cpu_model, environment, pick_device
from robench.errors import ConfigError
from robench.report import machine_label


def test_environment_records_cpu_model_blas_simd_and_threads():
    env = environment(torch.device("cpu"))
    assert env["cpu"] == cpu_model() and env["cpu"] not in ("", "unknown")
    assert env["blas"] == blas_build() and env["blas"] != "unknown"
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["threads"] == torch.get_num_threads()
    assert {"robench", "torch", "torchattacks", "python", "device"} <= set(env)


def test_machine_label_shows_the_arithmetic_behind_a_cpu_number():
    env = environment(torch.device("cpu"))
    label = machine_label(env)
    assert label.startswith("cpu (") and env["cpu"] in label and env["blas"] in label and "threads" in label
    assert machine_label({"device": "NVIDIA H200", "cuda": "13.0"}) == "NVIDIA H200 (CUDA 13.0)"
    assert machine_label({"device": "cpu (x86_64)"}) == "cpu (x86_64)", "records stored before the machine was"


def test_batch_seeds_differ_per_batch_and_seed():
    seeds = {batch_seed(seed, batch) for seed in range(3) for batch in range(100)}
    assert len(seeds) == 300


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_a_configuration_error():
    with pytest.raises(ConfigError, match="--device cpu"):
        pick_device("cuda")
