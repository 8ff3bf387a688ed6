"""The ahead-of-time compile check: every kernel configuration the triton backend can choose
(what :mod:`.launch` says the tilings launch), and a compiler for them that needs no GPU.

    kernel_configs(dtype, T, B, H, R, options) -> [KernelConfig(kernel, signature,
                                                   constexprs, num_warps, num_stages)]
    compile_config(cfg, arch=90) -> {"regs", "spills", "stack", "shared", "ok", "error"}

``python -m fusedrnn.backends.triton.aot [--arch 90 80]`` compiles the configurations of a
grid of representative shapes and prints one line each (registers, spill bytes, shared
memory).  Run it in a process without TRITON_INTERPRET (the interpreter replaces the
kernels by Python functions).

Dimension letters: T steps, B batch, H hidden, P projection, R = P or H, G = 4H (the GRU's 3H).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import tempfile
from typing import NamedTuple, Optional

import torch

from ...core.contract import MaskMode, NormMode
from . import config as C
from . import launch as L
from .kernels.common import ZoneoutMode

_TY = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}

# Pointer arguments and the tensor each one is, by role: "in" the input dtype, "acc" the
# fp32 / fp64 state and workspace dtype, "i64" lengths, "i32" the barrier counters.  The h
# states (hs) are in the input dtype, and so is dhh_ws except with layer norm (host.py).
_IN = {"xp", "y", "mask", "dy", "dxp", "dh_n", "dc_n", "dh0", "dc0", "w_hh", "w_hr", "norm_wh",
       "norm_wc", "norm_bc", "rm_h", "rv_h", "rm_c", "rv_c", "zc", "zh", "hs", "b_hh"}
_ACC = {"cs", "hc_ws", "act_ws", "hhat_ws", "stats_h", "stats_c", "dhn_ws",
        "dh_buf", "dc_buf", "dg_h", "dg_c", "db_c", "ln_part", "gates_ws", "gn_ws", "dz_buf", "db_part"}
_INTS = {"s", "T", "B", "H", "R", "P", "NS", "NSC", "bn_off", "bn_S"}
# Pointers that the host replaces by an ACC dummy when the option is off.
_OPTIONAL = {"mask": "mask", "w_hr": "proj", "b_hh": "bias", "norm_wh": "norm", "norm_wc": "norm", "norm_bc": "norm",
             "rm_h": "bn_eval", "rv_h": "bn_eval", "rm_c": "bn_eval", "rv_c": "bn_eval", "zc": "zoneout",
             "zh": "zoneout"}


class KernelConfig(NamedTuple):
    kernel: object  # the @triton.jit function
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    ints: dict = {}  # the specialised integer arguments' values (B, H, R, P) at this problem


def _signature(kernel, dtype: torch.dtype, opts: dict) -> dict:
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    sig = {}
    for i, name in enumerate(kernel.arg_names):
        if kernel.params[i].is_constexpr:
            sig[name] = "constexpr"
        elif name in _INTS:
            sig[name] = "i32"
        elif name == "eps":
            sig[name] = "fp32"
        else:
            if name == "lengths":
                ty = "i64"
            elif name == "bar":
                ty = "i32"
            elif name in _IN:
                opt = _OPTIONAL.get(name)
                on = opt is None or opts.get(opt, False)
                if name == "w_hr" and not on:  # the host passes w_hh
                    on = True
                ty = _TY[dtype] if on else _TY[acc]
            elif name == "dhh_ws":
                ty = _TY[acc] if opts.get("layer") else _TY[dtype]
            elif name in _ACC:
                ty = _TY[acc]
            else:
                raise KeyError(f"{kernel.__name__}: no type rule for argument {name!r}")
            sig[name] = "*" + ty
    return sig


def _flags(o: dict, dtype: torch.dtype) -> dict:
    prec = "tf32" if dtype == torch.float32 and o.get("tf32", False) else "ieee"
    mask = {None: MaskMode.NONE, "shared": MaskMode.SHARED, "per_step": MaskMode.PER_STEP}[o.get("mask")]
    bn = {None: NormMode.NONE, "train": NormMode.BATCH_TRAIN, "eval": NormMode.BATCH_EVAL,
          "layer": NormMode.LAYER}[o.get("bn")]
    zo = {None: ZoneoutMode.NONE, "train": ZoneoutMode.WEIGHTS, "eval": ZoneoutMode.RATE}[o.get("zoneout")]
    return L.flags(mask, bool(o.get("lengths")), bool(o.get("reverse")), bn, bool(o.get("proj")),
                   bool(o.get("save", True)), prec, zo)


# Every design a shape may run on: the auto choice, per step, and the persistent variants.
ALL_DESIGNS = ("auto", "step", "persistent-resident", "persistent-stream")


def _config(launch: L.Launch, dtype: torch.dtype, opts: dict, sizes: dict) -> KernelConfig:
    """The compile configuration of one launch (sizes: the problem's B, H, R, P values)."""
    sig = _signature(launch.kernel, dtype, opts)
    ce = launch.constexprs
    missing = [n for n, t in sig.items() if t == "constexpr" and n not in ce]
    if missing:
        raise KeyError(f"{launch.kernel.__name__}: no value for constexprs {missing}")
    ints = {n: v for n, v in sizes.items() if n in launch.kernel.arg_names}
    return KernelConfig(launch.kernel, sig, ce, launch.num_warps, launch.num_stages, ints)


def _unique(kcs) -> list[KernelConfig]:
    """kcs without repeats (the same kernel, constexprs and warps), in order."""
    out, seen = [], set()
    for kc in kcs:
        key = (kc.kernel.__name__, tuple(sorted(kc.constexprs.items())), kc.num_warps)
        if key not in seen:
            seen.add(key)
            out.append(kc)
    return out


def configs_of_tiling(tiling: C.Tiling, s: C.Shape, dtype: torch.dtype, o: dict) -> list[KernelConfig]:
    """The kernels (forward and, with save, backward) that a tiling launches."""
    f = _flags(dict(o, proj=s.proj), dtype)
    opts = dict(mask=o.get("mask") is not None, proj=s.proj, norm=o.get("bn") is not None,
                bn_eval=o.get("bn") == "eval", zoneout=o.get("zoneout") is not None, layer=o.get("bn") == "layer")
    return [_config(launch, dtype, opts, dict(B=s.B, H=s.H, R=s.R, P=s.R)) for launch in L.launches(tiling, s, f)]


def gru_kernel_configs(dtype: torch.dtype, B: int, H: int, o: dict) -> list[KernelConfig]:
    """The GRU's kernels (host.gru_forward / gru_backward: the tilings config.gru_tilings
    gives each design this shape admits, no autotuning; with a bias unless o["bias"] is
    False)."""
    dev = o.get("device", C.SM90)
    s = C.Shape(B=B, H=H, R=H, proj=False, bn=o.get("bn") in ("train", "eval"), esize=dtype.itemsize,
                ln=o.get("bn") == "layer", gates=3)
    f = dict(_flags(dict(o, proj=False), dtype), HAS_BIAS=o.get("bias", True))
    opts = dict(mask=o.get("mask") is not None, norm=o.get("bn") is not None, bn_eval=o.get("bn") == "eval",
                zoneout=o.get("zoneout") is not None, bias=o.get("bias", True), layer=o.get("bn") == "layer")
    kcs = []
    for d in o.get("designs", ALL_DESIGNS):
        try:
            tilings = C.gru_tilings(s, dev, d)
        except ValueError:  # this design cannot run this shape: never chosen
            continue
        kcs += [_config(launch, dtype, opts, dict(B=B, H=H)) for launch in L.gru_launches(tilings, s, f)]
    return _unique(kcs)


def kernel_configs(dtype: torch.dtype, T: int, B: int, H: int, R: int,
                   options: Optional[dict] = None) -> list[KernelConfig]:
    """Every kernel + constexpr configuration that may run for this problem.

    options: proj (default R != H), mask (None | "shared" | "per_step"), lengths, reverse,
    bn (None | "train" | "eval" | "layer": layer norm), zoneout (None | "train": [T, B, *]
    weights | "eval": one rate each), save (backward kernels too; default True), tf32,
    device (a config.Device; default config.SM90), designs (default ALL_DESIGNS: every
    design this shape admits), autotune (default True: each design's whole autotuning space,
    config.candidate_tilings), cell ("lstm", or "gru": :func:`gru_kernel_configs`)."""
    o = dict(options or {})
    if o.get("cell") == "gru":
        return gru_kernel_configs(dtype, B, H, o)
    o.setdefault("proj", R != H)
    dev = o.get("device", C.SM90)
    s = C.Shape(B=B, H=H, R=R, proj=bool(o["proj"]), bn=o.get("bn") in ("train", "eval"),
                esize=dtype.itemsize, ln=o.get("bn") == "layer")
    tilings = []
    for d in o.get("designs", ALL_DESIGNS):
        try:
            cands = C.candidate_tilings(s, dev, d) if o.get("autotune", True) else [C.tiling(s, dev, d)]
        except ValueError:  # this design cannot run this shape: never chosen
            continue
        tilings += [t for t in cands if t not in tilings]
    return _unique(kc for t in tilings for kc in configs_of_tiling(t, s, dtype, o))


def attrs_of(kc: KernelConfig) -> dict:
    """The argument attributes the JIT specialises at run time: pointers 16-byte aligned (fresh
    torch allocations), and the integer sizes divisible by 16 marked so (what lets loads
    vectorise and the streamed K loops pipeline into cp.async)."""
    return {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kc.kernel.arg_names)
            if kc.signature[n].startswith("*") or kc.ints.get(n, 1) % 16 == 0}


def compile_config(kc: KernelConfig, arch: int = 90) -> dict:
    """Compile one configuration for sm_<arch> (no GPU needed): registers, spills and stack
    from Triton's bundled ptxas -v, shared memory from the compiled metadata."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        src = ASTSource(fn=kc.kernel, signature=kc.signature, constexprs=kc.constexprs, attrs=attrs_of(kc))
        ck = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=kc.num_warps, num_stages=kc.num_stages))
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        return dict(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
    info = dict(ok=True, shared=ck.metadata.shared, error=None)
    info.update(ptxas_report(ck.asm["ptx"], arch))
    return info


def ptxas_report(ptx: str, arch: int) -> dict:
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    target = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        r = subprocess.run([ptxas, "-v", f"-arch={target}", path, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True)
    txt = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", txt)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", txt)
    stack = re.search(r"(\d+) bytes stack frame", txt)
    return dict(regs=int(regs.group(1)) if regs else None,
                spills=int(spill.group(1)) + int(spill.group(2)) if spill else None,
                stack=int(stack.group(1)) if stack else None, ptxas_ok=r.returncode == 0)


def describe(kc: KernelConfig) -> str:
    c = kc.constexprs
    keys = ("MASK", "HAS_LEN", "REVERSE", "BN", "PROJ", "SAVE", "ZO", "RESIDENT", "FINAL", "BB", "BH",
            "BP", "BR", "BK", "KST", "RP", "HP", "GP", "PP")
    parts = [f"{k}={c[k]}" for k in keys if k in c]
    dt = next((kc.signature[k] for k in ("w_hh", "w_hr", "xp", "dc_n") if k in kc.signature), "?")
    return f"{kc.kernel.__name__}[{dt[1:]}] w{kc.num_warps} " + " ".join(parts)


# Representative problems for the gate: (dtype, B, H, R, options).
GRID = [
    (dt, B, H, R, dict(mask=m, bn=bn, lengths=ln, reverse=rv))
    for dt in (torch.float32, torch.bfloat16, torch.float16)
    for (B, H, R) in ((64, 512, 512), (32, 256, 128), (256, 1024, 1024), (8, 64, 64))
    for m, bn, ln, rv in ((None, None, False, False), ("shared", "train", True, True),
                          ("per_step", "eval", False, True))
] + [
    (dt, B, H, H, dict(cell="gru", mask=m, bn=bn, lengths=ln, reverse=rv, zoneout=zo))
    for dt in (torch.float32, torch.bfloat16)
    for (B, H) in ((64, 512), (8, 64))
    for m, bn, ln, rv, zo in ((None, None, False, False, None), ("shared", "train", True, True, "train"),
                              ("per_step", "eval", False, True, "eval"))
]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--limit", type=int, default=0, help="compile at most this many configs")
    a = ap.parse_args(argv)
    seen, failures = set(), 0
    todo = []
    for dt, B, H, R, o in GRID:
        for arch in a.arch:
            dev = C.SM90 if arch >= 90 else C.SM80
            for kc in kernel_configs(dt, 100, B, H, R, dict(o, device=dev)):
                key = (arch, describe(kc), tuple(sorted(kc.signature.items())))
                if key not in seen:
                    seen.add(key)
                    todo.append((arch, kc))
    if a.limit:
        todo = todo[: a.limit]
    for arch, kc in todo:
        r = compile_config(kc, arch)
        if not r["ok"] or not r.get("ptxas_ok", False) or r.get("spills"):
            failures += 1
        print(f"sm_{arch} {'ok  ' if r['ok'] else 'FAIL'} regs={r.get('regs')} "
              f"spill={r.get('spills')} stack={r.get('stack')} smem={r.get('shared')} "
              f"{describe(kc)}" + (f" :: {r['error']}" if r.get("error") else ""), flush=True)
    print(f"{len(todo)} configurations, {failures} failing or spilling")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
