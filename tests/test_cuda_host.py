"""The CUDA host code's fallback after a persistent (cooperative) launch, without a GPU: a launch
the device refuses lets the shape run the per-step design from then on, with a warning; any other
launch error raises (csrc/cuda/layer_host.cpp persistent_ran, through the internal op
fusedrnn::_cuda_launch_refused, which runs it on a stub shape).  Needs fusedrnn._C built with CUDA."""

import pytest
import torch

from fusedrnn.backends import compiled

pytestmark = pytest.mark.skipif(not compiled.has_kernel("_cuda_launch_refused", "CompositeExplicitAutograd"),
                                reason="fusedrnn._C built without CUDA kernels")

# cudaError_t codes (driver_types.h)
SUCCESS = 0
REFUSALS = {"cudaErrorCooperativeLaunchTooLarge": 720, "cudaErrorLaunchOutOfResources": 701,
            "cudaErrorInvalidConfiguration": 9, "cudaErrorNotSupported": 801}
OTHERS = {"cudaErrorIllegalAddress": 700, "cudaErrorInvalidValue": 1, "cudaErrorMemoryAllocation": 2}


def test_successful_launch_keeps_the_persistent_design():
    assert torch.ops.fusedrnn._cuda_launch_refused(SUCCESS) is False


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refused_launch_falls_back_to_the_per_step_design(name, capfd):
    assert torch.ops.fusedrnn._cuda_launch_refused(REFUSALS[name]) is True
    err = capfd.readouterr().err  # TORCH_WARN from an op writes to stderr
    assert name in err and "per-step design from now on" in err, err


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_launch_error_raises(name):
    with pytest.raises(RuntimeError, match=f"launch of a stubbed persistent kernel failed: {name}"):
        torch.ops.fusedrnn._cuda_launch_refused(OTHERS[name])
