"""The GPU compile gate, on the CPU: every Triton and CUDA kernel the dispatcher can choose
is compiled for sm_80 and sm_90, and its resources are checked before any GPU sees it.

    python benchmarks/compile_gate.py [--full] [--write benchmarks/resources.md] [--jobs N] [--force]

Triton: for every point of the GPU benchmark grid (benchmarks/gpu_check.sh, preset
"anchors"), the benchmarked variants (plain, variational+bn) and, on sm_90, zoneout and
layer_norm (every arch with --full), the kernel
configurations the triton backend's dispatcher picks there (--full: every design and every
autotuning candidate) are compiled with triton.compile(ASTSource, GPUTarget) for sm_90 and
sm_80; Triton's bundled ptxas -v gives registers and spills, the metadata shared memory.
CUDA: every csrc/cuda/*.cu is compiled to cubin for sm_80 / sm_90 with ptxas -v; the
persistent kernels' layout (the same C++ function the dispatcher calls at run time,
persistent_layout_for) is evaluated for the grid with H100 and A100 limits; cuobjdump's SASS
shows whether the recurrent matmuls use tensor cores (HMMA).

Fails (exit 1) on: a compile failure; shared memory over the device's opt-in limit;
registers x threads over the register file; spills not on the allow-list below; a
CUDA persistent layout the heuristic accepts that would not fit one block per SM; a grid shape
the CUDA layout should run persistently but rejects; no MMA in a bf16/fp16 recurrent
kernel; a non-coherent (read-only path: PTX ld.global.nc, SASS LDG...CONSTANT) global load in
a persistent kernel, Triton or CUDA (other programs write its exchange buffers during the
launch; the exchange is read through L2 (.cg / cp.async.cg) or after the barrier's acquire).
Writes the resource table to benchmarks/resources.md (left untouched when only its date would
change) and prints a summary line.  A passing run leaves build/compile_gate.stamp, a digest
of everything the verdict depends on; the next run with the same digest passes at once
(--force compiles anyway).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.pop("TRITON_INTERPRET", None)  # the interpreter would replace the kernels

import torch  # noqa: E402

LIMITS = {  # arch -> (opt-in shared memory per block, SMs, registers per SM), H100 SXM / A100
    90: (232448, 132, 65536),
    80: (166912, 108, 65536),
}

# Spills accepted, each with its reason: (kernel name regex, max bytes, why).
SPILL_ALLOW = [
    (r"^fwd_persistent_kernel\[(bf16|fp16)\]", 128,
     "persistent forward in half types streaming W at 255 registers: a few words of the "
     "addressing spill to L1; measured harmless on the H200 run (benchmarks/NOTES.md)"),
    (r"^fwd_persistent_kernel\[fp32\]", 128, "as above, fp32 with a 32-wide hidden tile"),
    (r"^(fwd|bwd)_step_kernel\[.*\] w16 .*BN=1", 4608,
     "per-step batch norm with 64 < B <= 256 rows in one program (16 warps; the grid point "
     "bf16 B=256 H=1024 variational+bn); the only triton design that keeps the batch "
     "statistics in one program; up to 4.5 KB on sm_80, speed unmeasured"),
    (r"^bwd_persistent_kernel\[fp32\]", 64, "fp32 persistent backward on sm_80: 40 bytes"),
    (r"^bwd_persistent_kernel\[(bf16|fp16)\]", 32,
     "persistent backward in half types at H=1024: 28 bytes with batch norm on sm_90, 12 bytes "
     "on sm_80 without, since the gate compiles what the JIT specialises (sizes divisible by "
     "16) and the streamed K loop is pipelined 3 deep (ptxas stops at 128 registers there)"),
    (r"^fwd_step_kernel\[fp32\] w8 .*BN=1", 16,
     "per-step fp32 batch norm with 64 rows: 16 bytes since the streamed K loop is pipelined "
     "3 deep (ptxas stops at 128 registers); the per-step design is the fallback"),
    (r"^fwd_step_kernel\[.*\] w4 .*BN=3", 16,
     "layer norm's GEMM-only step (four raw accumulators stored) on sm_80: 12 bytes (0 on sm_90)"),
    (r"^bwd_gru_kernel\[fp32\] w8 .*BN=1", 16,
     "the GRU's per-step fp32 backward with batch norm at 64 rows on sm_80: 8 bytes whatever the "
     "K loop's pipeline depth (ptxas stops at 80 registers; 0 on sm_90 and at 32 or 128 rows)"),
    (r"^(fwd|bwd)_gru_persistent_kernel\[", 24,
     "the GRU's persistent kernels away from the anchors (a sweep of B 1-128, H 64-1024, every "
     "option, fp32 / bf16 / fp16): 8-24 bytes where ptxas stops at 80 or 128 registers, as the "
     "LSTM's persistent kernels above; none at the anchors; speed unmeasured"),
    (r"^void ln_forward_kernel<double>", 96,
     "CUDA layer-norm forward in fp64 (a test dtype): 48 bytes stored and loaded around the "
     "called double division / square-root subroutines; the fp32 / fp16 / bf16 instances have none"),
    (r"^void forward_kernel<", 48,
     "CUDA per-step forward pointwise kernel: 16-24 bytes (the by-value LayerParams and the "
     "units loop), 40 on sm_90 since zoneout's branches joined it; the per-step design is the "
     "fallback, not the fast path"),
]


def allowed_spill(name: str, nbytes: int):
    for pat, limit, why in SPILL_ALLOW:
        if re.search(pat, name) and nbytes <= limit:
            return why
    return None


# ---- Triton --------------------------------------------------------------------------------


def triton_jobs(full: bool):
    from fusedrnn.backends.triton import config as C
    from fusedrnn.backends.triton import aot as gate
    from fusedrnn.bench.suite import DTYPES, PRESETS

    variants = {"plain": dict(), "variational+bn": dict(mask="shared", bn="train"),
                "zoneout": dict(zoneout="train"), "layer_norm": dict(bn="layer")}
    # the options beyond the benchmarked variants on sm_90 only, except with --full (CI time)
    archs = {v: (90, 80) if full or v in ("plain", "variational+bn") else (90,) for v in variants}
    seen, jobs = set(), []
    for p in PRESETS["anchors"]["points"]:
        dt = DTYPES[p.dtype]
        for vname, opts in variants.items():
            for arch in archs[vname]:
                dev = C.SM90 if arch == 90 else C.SM80
                o = dict(opts, device=dev, cell=p.rnn)
                if not full:
                    o.update(autotune=False, designs=("auto",))
                try:
                    kcs = gate.kernel_configs(dt, p.T, p.B, p.H, p.H, o)
                except Exception as e:  # noqa: BLE001 - the backend declines: reported as such
                    jobs.append(("error", arch, f"{p} {vname}", f"{type(e).__name__}: {e}"))
                    continue
                for kc in kcs:
                    key = (arch, gate.describe(kc))
                    if key not in seen:
                        seen.add(key)
                        jobs.append(("triton", arch, gate.describe(kc), kc))
    return jobs


def compile_triton(job):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fusedrnn.backends.triton import aot as gate

    _, arch, name, kc = job
    row = dict(kind="triton", name=name, arch=arch, dtype=name.split("[")[1].split("]")[0],
               threads=32 * kc.num_warps, ok=False, error=None, mma=None)
    try:  # with the argument specialisation the JIT makes at run time (aot.attrs_of)
        ck = triton.compile(ASTSource(fn=kc.kernel, signature=kc.signature, constexprs=kc.constexprs,
                                      attrs=gate.attrs_of(kc)),
                            target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=kc.num_warps, num_stages=kc.num_stages))
    except Exception as e:  # noqa: BLE001 - reported as a gate failure
        row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        return row
    ptx = ck.asm["ptx"]
    rep = gate.ptxas_report(ptx, arch)
    row.update(ok=rep.get("ptxas_ok", False), regs=rep.get("regs"), spills=rep.get("spills"),
               shared=ck.metadata.shared,
               # the recurrent matmul of a half-type kernel must be tensor-core MMA
               mma="mma.sync" in ptx or "wgmma" in ptx,
               # non-coherent (read-only path) loads: a persistent kernel must not read the
               # buffers other programs write that way (its own inputs have no need either)
               nc=len(re.findall(r"ld\.global\.nc", ptx)))
    if not row["ok"]:
        row["error"] = "ptxas failed"
    return row


# ---- CUDA ------------------------------------------------------------------------------------

NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
              "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__"]


def nvcc() -> str:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else (shutil.which("nvcc") or "")


def cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def demangle(names):
    r = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return r.stdout.splitlines() if r.returncode == 0 else list(names)


def compile_cuda(job):
    _, arch, src, tmp = job
    out = os.path.join(tmp, f"{os.path.basename(src)}.sm{arch}.cubin")
    cmd = [nvcc(), *NVCC_FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-cubin", "-Xptxas", "-v",
           "-I", os.path.join(ROOT, "csrc"), src, "-o", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return [dict(kind="cuda", name=os.path.basename(src), arch=arch, ok=False, error=r.stderr[-2000:])]
    rows, cur = [], None
    for line in (r.stdout + r.stderr).splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            cur = dict(kind="cuda", mangled=m.group(1), arch=arch, ok=True, error=None, file=os.path.basename(src))
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spills"] = int(m.group(1)), int(m.group(2)) + int(m.group(3))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            m2 = re.search(r"(\d+) bytes smem", line)
            cur["shared"] = int(m2.group(1)) if m2 else 0
    names = demangle([x["mangled"] for x in rows])
    sass = ""
    if os.path.exists(cuobjdump()):
        sass = subprocess.run([cuobjdump(), "--dump-sass", out], capture_output=True, text=True).stdout
    for row, nm in zip(rows, names):
        row["name"] = re.sub(r"fusedrnn::cuda::(\(anonymous namespace\)::)?", "", nm)
        row["threads"] = 256
        row["dtype"] = _cuda_dtype(row["name"])
        if "persistent" in row["name"]:
            body = _sass_body(sass, row["mangled"])
            row["mma"] = "HMMA" in body if body else False
            row["nc"] = len(re.findall(r"LDG\.[A-Z0-9.]*CONSTANT|LDG\.[A-Z0-9.]*\.NC", body))
    return rows


def _cuda_dtype(name: str) -> str:
    for k, v in (("__nv_bfloat16", "bf16"), ("__half", "fp16"), ("double", "fp64"), ("float", "fp32")):
        if k in name:
            return v
    return "-"


def _sass_body(sass: str, mangled: str) -> str:
    """The SASS of one function of a cuobjdump listing ("" if absent)."""
    start = sass.find(f"Function : {mangled}")
    if start < 0:
        return ""
    end = sass.find("Function : ", start + 10)
    return sass[start:end if end > 0 else len(sass)]


PLAN_DRIVER = r"""
#include <cstdio>
#include "cuda/launch.h"
using namespace fusedrnn::cuda;
int main(int argc, char** argv) {
  // lines of: dtype B H R smem_limit sms
  int dt; long long B, H, R, smem; int sms;
  while (std::scanf("%d %lld %lld %lld %lld %d", &dt, &B, &H, &R, &smem, &sms) == 6) {
    PersistentLayout p = persistent_layout_for(static_cast<DType>(dt), B, H, R, false, (size_t)smem, sms);
    std::printf("%d %d %d %zu %zu %s%s%s %s\n", p.ok ? 1 : 0, p.units, p.blocks, p.smem_forward, p.smem_backward,
                p.stage_xp ? "x" : "", p.stage_h ? "h" : "", p.stage_saved ? "s" : "-", p.ok ? "-" : p.why);
  }
  return 0;
}
"""

# The grid shapes whose CUDA layout must be persistent on an H100 (no projection): the
# benchmark anchors (bf16 / fp16; fp32 with TF32).
DTYPE_CODE = {"fp32": 0, "fp64": 1, "fp16": 2, "bf16": 3}


def cuda_plans(tmp: str):
    from fusedrnn.bench.suite import PRESETS

    exe = os.path.join(tmp, "plan_driver")
    src = os.path.join(tmp, "plan_driver.cu")
    with open(src, "w") as f:
        f.write(PLAN_DRIVER)
    r = subprocess.run([nvcc(), *NVCC_FLAGS, "-gencode=arch=compute_90,code=sm_90", "-I", os.path.join(ROOT, "csrc"),
                        src, os.path.join(ROOT, "csrc", "cuda", "layer_persistent.cu"), "-o", exe],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return [dict(kind="plan", ok=False, error=r.stderr[-2000:], name="plan_driver", arch=90)]
    queries, meta = [], []
    for p in PRESETS["anchors"]["points"]:
        for arch, (smem, sms, _) in LIMITS.items():
            queries.append(f"{DTYPE_CODE[p.dtype]} {p.B} {p.H} {p.H} {smem} {sms}")
            meta.append((p, arch))
    out = subprocess.run([exe], input="\n".join(queries) + "\n", capture_output=True, text=True).stdout.splitlines()
    rows = []
    for (p, arch), line in zip(meta, out):
        ok, units, blocks, sf, sb, stages, *why = line.split(" ")
        smem, sms, _ = LIMITS[arch]
        rows.append(dict(kind="plan", arch=arch, dtype=p.dtype, B=p.B, T=p.T, H=p.H, ok=ok == "1", units=int(units),
                         blocks=int(blocks), smem_forward=int(sf), smem_backward=int(sb), why=" ".join(why),
                         stages=", ".join(n for c, n in (("x", "xp"), ("h", "h"), ("s", "saved")) if c in stages) or "-",
                         fits=int(blocks) <= sms and int(sf) <= smem and int(sb) <= smem))
    return rows


# ---- checks and report -------------------------------------------------------------------------


def check(rows):
    problems = []
    for r in rows:
        where = f"{r.get('kind')} sm_{r.get('arch')} {r.get('name', '')}"
        if r["kind"] == "plan":
            if not r.get("ok", False) and r.get("error"):
                problems.append(f"{where}: layout driver failed: {r['error']}")
            elif r["ok"] and not r["fits"]:
                problems.append(f"layout sm_{r['arch']} {r['dtype']} B={r['B']} H={r['H']}: accepted but does not fit")
            elif not r["ok"] and r["arch"] == 90:
                problems.append(f"layout sm_90 {r['dtype']} B={r['B']} H={r['H']}: grid shape not persistent ({r['why']})")
            continue
        if not r.get("ok"):
            problems.append(f"{where}: compile failed: {r.get('error')}")
            continue
        smem_limit, _, regs_per_sm = LIMITS[r["arch"]]
        if (r.get("shared") or 0) > smem_limit:
            problems.append(f"{where}: {r['shared']} B shared memory > {smem_limit}")
        if r.get("regs") is not None and r["regs"] * r.get("threads", 256) > regs_per_sm:
            problems.append(f"{where}: {r['regs']} registers x {r['threads']} threads > {regs_per_sm}")
        if r.get("spills"):
            why = allowed_spill(r["name"], r["spills"])
            if why is None:
                problems.append(f"{where}: {r['spills']} bytes of spills (not on the allow-list)")
            else:
                r["allowed"] = True
        if r.get("mma") is False and r.get("dtype") in ("bf16", "fp16") and (
                "persistent" in r["name"] or "_step_kernel" in r["name"]):
            problems.append(f"{where}: no tensor-core MMA in a half-type recurrent kernel")
        if r.get("nc") and "persistent" in r["name"]:
            problems.append(f"{where}: {r['nc']} non-coherent (read-only path) global loads in a persistent "
                            "kernel, whose exchange buffers other blocks write during the launch")
    return problems


def write_table(rows, path, seconds, problems):
    lines = [
        "# Kernel resources (the compile gate)",
        "",
        f"Written by `python benchmarks/compile_gate.py` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}"
        f", triton {_triton_version()}, {_nvcc_version()}); {len(rows)} rows, {seconds:.0f} s,"
        f" {len(problems)} problems. Limits: sm_90 = H100 SXM (232448 B shared memory per block, 132 SMs),"
        " sm_80 = A100 (166912 B, 108 SMs). Spills marked * are on the commented allow-list in the gate.",
        "",
        "## Compiled kernels",
        "",
        "| backend | kernel and config | dtype | arch | registers | spills (B) | shared (B) | MMA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted((r for r in rows if r["kind"] != "plan"), key=lambda r: (r["kind"], r.get("name", ""), r["arch"])):
        sp = r.get("spills")
        sp_s = "-" if sp is None else f"{sp}{'*' if r.get('allowed') else ''}"
        mma = {True: "yes", False: "no", None: "-"}[r.get("mma")]
        lines.append(f"| {r['kind']} | `{r.get('name', '')}` | {r.get('dtype', '-')} | sm_{r['arch']} | "
                     f"{r.get('regs', '-')} | {sp_s} | {r.get('shared', '-')} | {mma} |")
    lines += ["", "## CUDA persistent layouts for the benchmark grid", "",
              "| dtype | B | T | H | arch | persistent | units/block | blocks | smem fwd | smem bwd | stages | why not |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "plan" and "B" in r:
            lines.append(f"| {r['dtype']} | {r['B']} | {r['T']} | {r['H']} | sm_{r['arch']} | {'yes' if r['ok'] else 'no'} | "
                         f"{r['units']} | {r['blocks']} | {r['smem_forward']} | {r['smem_backward']} | {r['stages']} | "
                         f"{r['why']} |")
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    if os.path.exists(path):  # the same table as before: keep the file (its date, a clean tree)
        with open(path) as f:
            old = f.read().splitlines()
        if old[:2] + old[3:] == lines[:2] + lines[3:]:
            return
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "none"


def _nvcc_version():
    try:
        out = subprocess.run([nvcc(), "--version"], capture_output=True, text=True).stdout
        m = re.search(r"release ([\d.]+)", out)
        return f"nvcc {m.group(1)}" if m else "nvcc"
    except OSError:
        return "no nvcc"


STAMP = os.path.join(ROOT, "build", "compile_gate.stamp")


def sources_key(full: bool) -> str:
    """What the gate's verdict depends on: this script, the Triton backend and the benchmark
    presets it compiles for, the CUDA sources, the compilers' releases and --full."""
    sys.path.insert(0, os.path.join(ROOT, "fusedrnn", "core"))
    from digest import digest_tree

    parts = [digest_tree(os.path.join(ROOT, d), suffixes) for d, suffixes in (
        ("benchmarks", ("compile_gate.py",)), ("fusedrnn/backends/triton", (".py",)), ("fusedrnn/bench", ("suite.py",)),
        ("csrc", (".cu", ".cuh", ".h")))]
    return digest_tree(os.path.join(ROOT, "fusedrnn", "core"), ("contract.py",),
                       " ".join(parts) + f" triton {_triton_version()} {_nvcc_version()} full={full}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="every design and autotuning candidate (slow)")
    ap.add_argument("--write", default=os.path.join(ROOT, "benchmarks", "resources.md"),
                    help="where to write the resource table ('' for nowhere)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-triton", action="store_true")
    ap.add_argument("--skip-cuda", action="store_true")
    ap.add_argument("--force", action="store_true",
                    help="compile even when nothing it depends on changed since its last passing run")
    args = ap.parse_args(argv)
    key = sources_key(args.full)
    skipping = args.skip_triton or args.skip_cuda
    if not (args.force or skipping) and os.path.exists(STAMP) and open(STAMP).read().strip() == key:
        print(f"compile gate: nothing it compiles changed since its last passing run (key {key}): OK "
              "(--force compiles anyway)")
        return 0
    t0 = time.time()
    rows = []
    have_nvcc = bool(nvcc()) and not args.skip_cuda
    try:
        import triton  # noqa: F401

        have_triton = not args.skip_triton
    except ImportError:
        have_triton = False
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        if have_triton:
            jobs += triton_jobs(args.full)
        if have_nvcc:
            for src in sorted(os.listdir(os.path.join(ROOT, "csrc", "cuda"))):
                if src.endswith(".cu"):
                    for arch in (80, 90):
                        jobs.append(("cuda", arch, os.path.join(ROOT, "csrc", "cuda", src), tmp))
        for j in jobs:
            if j[0] == "error":
                rows.append(dict(kind="triton", arch=j[1], name=j[2], ok=False, error=j[3]))
        with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
            futs = [ex.submit(compile_triton if j[0] == "triton" else compile_cuda, j) for j in jobs
                    if j[0] in ("triton", "cuda")]
            for f in futs:
                res = f.result()
                rows.extend(res if isinstance(res, list) else [res])
        if have_nvcc:
            rows.extend(cuda_plans(tmp))
    problems = check(rows)
    seconds = time.time() - t0
    if args.write:
        write_table(rows, args.write, seconds, problems)
    for p in problems:
        print("GATE:", p)
    n_t = sum(r["kind"] == "triton" for r in rows)
    n_c = sum(r["kind"] == "cuda" for r in rows)
    n_p = sum(r["kind"] == "plan" for r in rows)
    print(f"compile gate: {n_t} triton configs, {n_c} CUDA kernels, {n_p} persistent layouts for sm_80/sm_90 "
          f"in {seconds:.0f} s: {'OK' if not problems else f'{len(problems)} PROBLEMS'}"
          f"{'' if have_triton else ' (no triton)'}{'' if have_nvcc else ' (no nvcc)'}")
    if not problems and not skipping and have_triton and have_nvcc:
        os.makedirs(os.path.dirname(STAMP), exist_ok=True)
        with open(STAMP, "w") as f:
            f.write(key + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
