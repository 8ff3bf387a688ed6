"""A small pytest-benchmark set, separate from the test suite:

    pytest benchmarks --benchmark-only

One CPU layer shape, forward + backward, plain and variational+bn, on every CPU backend and
on torch.nn.LSTM, plus one LSTMCell step.  The suite proper is ``python -m fusedrnn bench``.
"""

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn.bench.providers import VARIANTS, build_cell_fn, build_layer_fn

pytest.importorskip("pytest_benchmark")

B, T, H = 16, 50, 128
PROVIDERS = ["torch-cpu"] + [f"fusedrnn-{b}" for b in fusedrnn.available_backends("cpu")]


@pytest.mark.parametrize("variant", ["plain", "variational+bn"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_layer_fwd_bwd(benchmark, provider, variant):
    if provider == "torch-cpu" and variant != "plain":
        pytest.skip("torch.nn.LSTM has no recurrent dropout or batch norm")
    fn = build_layer_fn(provider, variant, "fwd+bwd", B, T, H, H, torch.float32, torch.device("cpu"))
    benchmark.extra_info.update(B=B, T=T, H=H, variant=variant)
    benchmark(fn, 0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cell_step(benchmark, provider):
    fn = build_cell_fn(provider, "plain", "fwd+bwd", 32, 256, torch.float32, torch.device("cpu"))
    benchmark(fn, 0)
