"""The build: fusedrnn._C is importable, and its CUDA kernels were compiled whenever this
torch is a CUDA build and nvcc exists (so CI compiles every CUDA source, GPU or not)."""

import os
import shutil

import pytest
import torch

import fusedrnn
from fusedrnn.backends import compiled


def test_extension_loaded():
    assert compiled.LOAD_ERROR is None, compiled.LOAD_ERROR
    assert compiled.has_kernel("lstm_cell_forward", "CPU")
    assert "native" in fusedrnn.available_backends("cpu")


@pytest.mark.skipif(torch.version.cuda is None, reason="CPU-only torch: CUDA sources are not built")
@pytest.mark.skipif(os.environ.get("FUSEDRNN_CUDA") == "0", reason="FUSEDRNN_CUDA=0")
def test_cuda_kernels_compiled():
    nvcc = shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")
    if not nvcc:
        pytest.skip("nvcc not found")
    assert compiled.has_kernel("lstm_cell_forward", "CUDA")
    assert compiled.has_kernel("lstm_cell_backward", "CUDA")


def test_available_backends():
    cpu = fusedrnn.available_backends("cpu")
    assert cpu[-1] == "reference" and "cuda" not in cpu
    if not torch.cuda.is_available():
        assert "cuda" not in fusedrnn.available_backends("cuda")
