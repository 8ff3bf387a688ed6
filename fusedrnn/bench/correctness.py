"""The GPU check's correctness step: every design against cuDNN and the float64 reference.

    python -m fusedrnn.bench.correctness [--out DIR] [--budget-s S] [--dry-run] [--sanitize]

Each design (CUDA persistent, CUDA per-step, Triton persistent, Triton per-step) runs the
module's forward and backward at the shapes where the kernels have edges: the anchors
(H=768 and H=1024: the 6- and 8-unit blocks of the CUDA persistent plan on 132 SMs), a
hidden size whose last block is partial and whose K needs padding (H=900), and B >= 128;
in bf16 and fp16, plain and variational+bn.  The verdict is the error rule of the GPU
tests (flash-attention's): against the float64 reference, y, dx and dW_hh each within

    2 x (cuDNN's own error at that dtype, same shape) + eps(dtype) x max|reference|

and for variational+bn, which cuDNN cannot run, the error scale is the reference backend's
own (torch ops at that dtype, same masks).  A design that the plan refuses at a shape is reported as such (a silent fallback is a
result too: it costs the speed).  The table goes to stdout and to <out>/correctness.md,
the rows to <out>/correctness.json; the exit status is 1 if any row fails.

``--dry-run`` runs the same flow on the CPU (the native backend against torch's CPU LSTM, at
short T) and reports the GPU designs as skipped; ``--sanitize`` runs the small shapes that
benchmarks/gpu_check.sh runs under compute-sanitizer: every CUDA kernel (both layer designs,
batch norm over steps, the cell), forward and backward.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from typing import Optional

import torch

from .. import report
from ..modules import LSTM, LSTMCell
from ..backends import get as get_backend
from ..modules._torch import TorchLSTM
from ..ops.decision import unavailable_reason

# Dimension letters: T steps, B batch, H hidden (= input size I here).


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    B: int
    T: int
    H: int


SHAPES = (
    Shape("anchor H=768", 16, 32, 768),
    Shape("H=1024", 8, 32, 1024),
    Shape("partial+Kpad H=900", 20, 32, 900),
    Shape("B=128", 128, 16, 768),
)
# (shape, dtype) pairs run: every shape in bf16, the anchors in fp16 too.
DTYPE_PLAN = [(s, "bf16") for s in SHAPES] + [(SHAPES[0], "fp16"), (SHAPES[1], "fp16")]
VARIANTS = {"plain": {}, "v+bn": dict(recurrent_dropout=0.25, variational=True, batch_norm=True)}
# design name -> (backend, how to force it)
DESIGNS = {"cuda persistent": ("cuda", "persistent"), "cuda per-step": ("cuda", "step"),
           "triton persistent": ("triton", "persistent"), "triton per-step": ("triton", "step")}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# --sanitize: small shapes, every CUDA kernel.  H=36: K padded (36 -> 48), 9 blocks of 4
# units; H=532: 5-unit blocks on 132 SMs with a partial last block.
SANITIZE_SHAPES = (Shape("small", 5, 3, 36), Shape("partial", 3, 2, 532))
# and, in the first dtype, the kernels of the options that have not yet run on a GPU
SANITIZE_EXTRA = {"zoneout": dict(zoneout=0.2, recurrent_dropout=0.25), "layer_norm": dict(layer_norm=True, zoneout=0.1)}


@contextlib.contextmanager
def forced(backend: str, design: str):
    """Force a GPU design for the block: FUSEDRNN_DESIGN, the one switch both GPU backends read
    when they plan a launch ("auto" for the other backends)."""
    before = os.environ.get("FUSEDRNN_DESIGN")
    os.environ["FUSEDRNN_DESIGN"] = design if backend in ("cuda", "triton") else "auto"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FUSEDRNN_DESIGN", None)
        else:
            os.environ["FUSEDRNN_DESIGN"] = before


def ran_design(module, x) -> str:
    """What the module's backend says it runs for x (CUDA: persistent or per-step and why)."""
    be = get_backend(module.backend)
    for _, cfg in module.layer_configs(x):
        return be.describe(cfg, x.device) or module.backend
    return module.backend


def _run(module, x, gy, seed: int) -> dict[str, torch.Tensor]:
    """y, dx and dW_hh of one forward and backward, as float64."""
    xl = x.detach().to(next(module.parameters()).dtype).requires_grad_()
    torch.manual_seed(seed)  # the same masks in every run
    y, _ = module(xl)
    w = module.weight_hh_l0
    dx, dw = torch.autograd.grad(y, (xl, w), gy.to(y.dtype))
    return {"y": y.detach().double(), "dx": dx.double(), "dW_hh": dw.double()}


def _errors(got: dict, ref: dict) -> dict[str, float]:
    return {k: (got[k] - ref[k]).abs().max().item() for k in ref}


@dataclasses.dataclass
class Row:
    design: str
    shape: str
    dtype: str
    variant: str
    verdict: str  # ok, FAIL (error over the bound, or an exception), refused, skipped, not run
    ran: str = ""
    worst: str = ""  # the output with the largest error / bound
    err: Optional[float] = None
    bound: Optional[float] = None


class Check:
    """Runs the rows of one (shape, dtype): the references once, then every design."""

    def __init__(self, device: torch.device, designs: dict, torch_name: str):
        self.device, self.designs, self.torch_name = device, designs, torch_name

    def rows(self, s: Shape, dt: str, variants=VARIANTS) -> list[Row]:
        dev, dtype = self.device, DTYPES[dt]
        torch.manual_seed(0)
        x = torch.randn(s.T, s.B, s.H, dtype=torch.float64, device=dev)
        gy = torch.randn(s.T, s.B, s.H, dtype=torch.float64, device=dev)
        out = []
        # cuDNN (torch's own LSTM) at this dtype against itself in float64: the error scale.
        torch.manual_seed(1)
        t64 = TorchLSTM(s.H, s.H).double().to(dev)
        tlow = TorchLSTM(s.H, s.H).to(device=dev, dtype=dtype)
        tlow.load_state_dict(t64.state_dict())
        scale = _errors(_run(tlow, x, gy, 0), _run(t64, x, gy, 0))
        eps = torch.finfo(dtype).eps
        for var, opts in variants.items():
            torch.manual_seed(1)
            ref = LSTM(s.H, s.H, backend="reference", bn_max_steps=s.T, **opts).double().to(dev).train()
            ref.load_state_dict(t64.state_dict(), strict=False)
            want = _run(ref, x, gy, 7)
            if opts:  # torch's own error at this dtype for this computation: the reference's
                ref_low = LSTM(s.H, s.H, backend="reference", bn_max_steps=s.T, **opts).to(dev)
                ref_low.load_state_dict(ref.state_dict())
                scale = _errors(_run(ref_low.to(dtype).train(), x, gy, 7), want)
                del ref_low
            bound = {k: 2 * scale[k] + eps * want[k].abs().max().item() for k in want}
            for name, (backend, design) in self.designs.items():
                why = unavailable_reason(backend, dev)
                if why is not None:
                    out.append(Row(name, s.name, dt, var, "skipped", why))
                    continue
                m = LSTM(s.H, s.H, backend=backend, bn_max_steps=s.T, **opts).to(dev)
                m.load_state_dict(ref.state_dict())
                m = m.to(dtype).train()
                with forced(backend, design):
                    try:
                        ran = ran_design(m, x.to(dtype))
                    except ValueError as e:  # Triton: the forced design cannot run this shape
                        ran = str(e)
                    if design != "auto" and not ran.startswith(design.replace("step", "per-step")):
                        out.append(Row(name, s.name, dt, var, "refused", ran))
                        continue
                    try:
                        err = _errors(_run(m, x, gy, 7), want)
                    except Exception as e:  # noqa: BLE001 - reported as a failing row
                        out.append(Row(name, s.name, dt, var, "FAIL", f"{type(e).__name__}: {e}"))
                        continue
                k = max(err, key=lambda k: err[k] / bound[k])
                ok = all(err[k] <= bound[k] for k in err)  # NaN fails
                out.append(Row(name, s.name, dt, var, "ok" if ok else "FAIL", ran, k, err[k], bound[k]))
                del m
        return out


def run_check(device: torch.device, designs: dict, plan, budget_s: float, out: Optional[str]) -> list[Row]:
    t0 = time.time()
    chk = Check(device, designs, "cudnn" if device.type == "cuda" else "torch-cpu")
    rows: list[Row] = []
    for s, dt in plan:
        if time.time() - t0 > budget_s:
            rows += [Row(d, s.name, dt, v, "not run", f"time budget {budget_s:.0f} s spent") for d in designs
                     for v in VARIANTS]
            continue
        rows += chk.rows(s, dt)
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"  {s.name} {dt}: {time.time() - t0:.1f} s", flush=True)
        _write_report(rows, out)  # after every shape: a stage cut short by its timeout keeps the rows so far
    print(_write_report(rows, out))
    return rows


def _write_report(rows: list[Row], out: Optional[str]) -> str:
    """The verdict table (and the skipped designs) as Markdown; written to out/correctness.md
    and the rows to out/correctness.json when out is given."""
    header, table = verdict_table([r for r in rows if r.verdict != "skipped"])
    text = report.markdown_table(header, table)
    skipped = {r.design: r.ran for r in rows if r.verdict == "skipped"}
    text += "".join(f"\n{d}: skipped ({why})" for d, why in skipped.items())
    if out:
        report.write_text(os.path.join(out, "correctness.md"), text + "\n")
        report.write_json(os.path.join(out, "correctness.json"), [dataclasses.asdict(r) for r in rows])
    return text


def verdict_table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """design x shape x dtype x variant: the worst output's error against its bound."""
    header = ["design", "shape", "dtype", "variant", "verdict", "worst", "err", "bound", "ran"]
    fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
    return header, [[r.design, r.shape, r.dtype, r.variant, r.verdict, r.worst or "-", fmt(r.err), fmt(r.bound),
                     r.ran[:60]] for r in rows]


def sanitize(device: torch.device, backend: str = "cuda", dtypes=("bf16", "fp32")) -> None:
    """Every CUDA kernel once, forward and backward, at small shapes (for compute-sanitizer);
    zoneout and layer norm too (FUSEDRNN_CUDA_UNVERIFIED=1 while it runs: compiled, not yet
    validated on a GPU)."""
    before = os.environ.get("FUSEDRNN_CUDA_UNVERIFIED")
    os.environ["FUSEDRNN_CUDA_UNVERIFIED"] = "1"
    try:
        _sanitize_cases(device, backend, dtypes)
    finally:
        if before is None:
            os.environ.pop("FUSEDRNN_CUDA_UNVERIFIED", None)
        else:
            os.environ["FUSEDRNN_CUDA_UNVERIFIED"] = before
    if device.type == "cuda":
        torch.cuda.synchronize()
    print("sanitize: every case ran")


def _sanitize_cases(device: torch.device, backend: str, dtypes) -> None:
    for s in SANITIZE_SHAPES:
        for dt in dtypes:
            dtype = DTYPES[dt]
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs the persistent design via TF32
            extra = SANITIZE_EXTRA if dt == dtypes[0] else {}  # (once: the sanitizer's time limit)
            for var, opts in {**VARIANTS, **extra}.items():
                for design in ("persistent", "step"):
                    with forced(backend, design):
                        m = LSTM(s.H, s.H, backend=backend, bn_max_steps=s.T, **opts).to(device=device, dtype=dtype)
                        x = torch.randn(s.T, s.B, s.H, device=device, dtype=dtype, requires_grad=True)
                        print(f"  {s.name} {dt} {var} {design}: {ran_design(m, x)}", flush=True)
                        y, (h, c) = m(x)
                        (y.float().sum() + h.float().sum() + c.float().sum()).backward()
                cell = LSTMCell(s.H, s.H, backend=backend, **opts).to(device=device, dtype=dtype)
                xc = torch.randn(s.B, s.H, device=device, dtype=dtype, requires_grad=True)
                h, c = cell(xc)
                (h.float().sum() + c.float().sum()).backward()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fusedrnn.bench.correctness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="", help="directory for correctness.md / .json")
    ap.add_argument("--budget-s", type=float, default=90, help="stop starting new shapes after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU: native against torch's LSTM, short T")
    ap.add_argument("--sanitize", action="store_true", help="the small compute-sanitizer cases (CUDA only)")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.dry_run
    if a.sanitize:
        if not cuda:  # the same cases on the native CPU kernels, so that the flow itself is checked
            print("sanitize: no CUDA device; cases: "
                  + ", ".join(f"B={s.B} T={s.T} H={s.H}" for s in SANITIZE_SHAPES) + " x bf16/fp32 x plain/v+bn "
                  f"(+ {'/'.join(SANITIZE_EXTRA)} in bf16) x persistent/step, and the cell; run here on native fp32")
            sanitize(torch.device("cpu"), backend="native", dtypes=("fp32",))
            return 0
        sanitize(torch.device("cuda"))
        return 0
    if cuda:
        device, designs, plan = torch.device("cuda"), DESIGNS, DTYPE_PLAN
    else:
        # The flow on the CPU: the native backend stands in (in fp32, the CPU's dtype), the
        # GPU designs are listed as skipped, and T is short so that it takes seconds.
        device = torch.device("cpu")
        designs = {"native": ("native", "auto"), **DESIGNS}
        plan = [(dataclasses.replace(s, T=3), "fp32") for s, dt in DTYPE_PLAN if dt == "bf16"]
    print(f"== correctness on {torch.cuda.get_device_name() if cuda else 'cpu'} ({len(plan)} shape x dtype)")
    rows = run_check(device, designs, plan, a.budget_s, a.out)
    bad = [r for r in rows if r.verdict == "FAIL"]
    print(f"correctness: {sum(r.verdict == 'ok' for r in rows)} ok, {len(bad)} FAIL, "
          f"{sum(r.verdict == 'refused' for r in rows)} refused by the plan, "
          f"{sum(r.verdict in ('skipped', 'not run') for r in rows)} skipped / not run")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
