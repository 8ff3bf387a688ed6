"""Build fusedrnn._C: the C++ CPU kernels always, the CUDA kernels when torch is a CUDA
build and nvcc is found (a GPU is not needed to compile them).

Environment switches:
  FUSEDRNN_CUDA=0|1        skip CUDA, or require it (fail if torch or nvcc cannot build it);
                           unset: build CUDA whenever it can be built.
  TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0+PTX": kernel images for sm_80 and
                           sm_90, and sm_90 PTX that newer GPUs JIT-compile).  The targets are
                           recorded in the build (fusedrnn._C.CUDA_TARGETS): the cuda backend is
                           offered only on GPUs they can run on.
  MAX_JOBS                 parallel compile jobs (ninja), as torch's BuildExtension reads it.
  FUSEDRNN_DEBUG=1         -O0 -g host code (device code is always -O3 -lineinfo).
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """CUDA_HOME, else the toolkit that nvcc (possibly a wrapper script) belongs to."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return home
    return None


_cuda_home = _find_cuda_home()
if _cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ.setdefault("CUDA_HOME", _cuda_home)
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

try:
    import torch  # noqa: E402
except ImportError:
    sys.exit("fusedrnn: torch is not importable in the build environment. fusedrnn's extension compiles "
             "against the torch it will run with (the C++ ABI is specific to a torch release), so it is "
             "built without build isolation: install torch first, then\n"
             "    pip install --no-build-isolation .      (or: pip wheel --no-build-isolation .)\n"
             "(`make test` does both).")
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402
from torch.utils.cpp_extension import _get_cuda_arch_flags  # noqa: E402


def _want_cuda():
    flag = os.environ.get("FUSEDRNN_CUDA", "").strip()
    can = torch.version.cuda is not None and CUDA_HOME is not None
    why = (
        "torch is a CPU-only build" if torch.version.cuda is None
        else "nvcc / CUDA_HOME not found" if CUDA_HOME is None else ""
    )
    if flag == "0":
        return False
    if flag == "1" and not can:
        sys.exit(f"fusedrnn: FUSEDRNN_CUDA=1 but the CUDA extension cannot be built: {why}")
    if not can:
        print(f"fusedrnn: building without CUDA kernels ({why})")
    return can


def cuda_targets() -> str:
    """The code targets nvcc builds for (TORCH_CUDA_ARCH_LIST, resolved by torch exactly as the
    build resolves it): "sm_80;sm_90;compute_90" (sm_XY a kernel image, compute_XY PTX)."""
    out = []
    for flag in _get_cuda_arch_flags():
        code = flag.rsplit("code=", 1)[-1].strip("[]")
        out += [c for c in code.split(",") if c and c not in out]
    return ";".join(out)


def cuda_sources_fingerprint() -> str:
    """The fingerprint of what the CUDA kernels are built from: csrc/cuda, the headers it
    shares (csrc/*.h) and the nvcc release (fusedrnn/core/digest.py, loaded by path)."""
    import importlib.util
    import subprocess

    spec = importlib.util.spec_from_file_location("_digest", os.path.join(ROOT, "fusedrnn", "core", "digest.py"))
    digest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digest)
    headers = b"".join(open(h, "rb").read() for h in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.h"))))
    nvcc = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], capture_output=True,
                          text=True).stdout.strip().splitlines()[-1:]
    import hashlib

    extra = hashlib.sha256(headers).hexdigest() + " " + " ".join(nvcc)
    return digest.digest_tree(os.path.join(ROOT, "csrc", "cuda"), (".cu", ".cuh", ".cpp", ".h"), extra)


# The extension uses the stable ABI of Python >= 3.10 (requires-python): the wheel is tagged
# cp310-abi3 and loads on every later Python.
LIMITED_API = ("Py_LIMITED_API", "0x030A0000")

def extensions():
    debug = os.environ.get("FUSEDRNN_DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math lets GCC if-convert and vectorise the branch-free gate math (csrc/gates.h);
    # -fno-math-errno lets it vectorise sqrt (batch and layer norm's 1 / sqrt(var + eps) per
    # column: without it each is a scalar sqrtss with an errno branch); results are unchanged
    cxx += ["-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    sources = [os.path.join("csrc", "module.cpp")] + sorted(glob.glob("csrc/cpu/*.cpp"))
    common = dict(
        name="fusedrnn._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
        define_macros=[LIMITED_API],
    )
    if _want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-lineinfo"]  # registers and spills per kernel: benchmarks/compile_gate.py
        # '/'-separated tokens, stringified in csrc/module.cpp (no quotes to survive the shell)
        targets = "-DFUSEDRNN_CUDA_TARGETS=" + cuda_targets().replace(";", "/")
        # nvcc's flags only (csrc/cuda/build_info.cu holds it): a change of the CUDA sources then
        # recompiles the .cu files, not the C++ ones
        nvcc += ["-DFUSEDRNN_CUDA_SOURCES=fp" + cuda_sources_fingerprint()]
        return [CUDAExtension(sources=sources, extra_compile_args={
            "cxx": cxx + ["-DFUSEDRNN_WITH_CUDA", targets], "nvcc": nvcc}, **common)]
    return [CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **common)]


def torch_requirement() -> str:
    """The torch release line this build's ABI belongs to: torch>=X.Y,<X.(Y+1)."""
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return f"torch>={major}.{minor},<{major}.{minor + 1}"


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension with one object directory, build/temp, whatever the command:
    the editable install (which setuptools would build in a fresh temporary directory every
    time) and a wheel built from the same checkout share their objects, so ninja recompiles
    only what changed."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", "temp")


setup(
    ext_modules=extensions(),
    install_requires=[torch_requirement(), "numpy"],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
