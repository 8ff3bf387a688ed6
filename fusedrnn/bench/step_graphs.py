"""The per-step design with and without CUDA graphs at one point (the GPU check's stage):

    python -m fusedrnn.bench.step_graphs [--out DIR] [--B 16 --T 100 --H 256 --dtype bf16 --variant plain]

Times fusedrnn.LSTM on the triton backend with its per-step design forced, forward +
backward, launching every step (provider fusedrnn-triton-step) and through the captured
graphs of fusedrnn.backends.step_graphs (fusedrnn-triton-step-graphs), alternating, with the
repository's harness; appends the two records to DIR/step-graphs.jsonl (not the grid's file:
neither is the default path) and prints the ratio.  Without a CUDA GPU and triton it says so
and exits 0 (the GPU check's dry run).

Dimension letters: T steps, B batch, I = H input and hidden.
"""

from __future__ import annotations

import argparse
import importlib
import os

import torch

from . import harness
from .providers import VARIANTS
from .suite import DTYPES


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fusedrnn.bench.step_graphs")
    ap.add_argument("--out", default=None)
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--variant", default="plain", choices=sorted(VARIANTS))
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    from .. import LSTM, available_backends

    if not torch.cuda.is_available() or "triton" not in available_backends("cuda"):
        print("step graphs: needs a CUDA GPU and the triton backend: skipped")
        return 0
    host = importlib.import_module("fusedrnn.backends.triton.host")
    device, dtype = torch.device("cuda"), DTYPES[args.dtype]
    B, T, H = args.B, args.T, args.H
    torch.manual_seed(0)
    m = LSTM(H, H, backend="triton", bn_max_steps=T, **VARIANTS[args.variant]).to(device=device, dtype=dtype).train()
    x = torch.randn(T, B, H, device=device, dtype=dtype)
    gy = torch.randn(T, B, H, device=device, dtype=dtype)
    params = list(m.parameters())

    def run(graphs: bool):
        def fn(k: int) -> None:
            host.STEP_GRAPHS = graphs
            with host.forced_design("step"):
                for p in params:
                    p.grad = None
                m(x)[0].backward(gy)
        return fn

    old = host.STEP_GRAPHS
    try:
        timings = harness.time_group({"fusedrnn-triton-step": run(False), "fusedrnn-triton-step-graphs": run(True)},
                                     device, warmup=3, reps=args.reps)
    finally:
        host.STEP_GRAPHS = old
        host.GRAPHS.clear()
    env = harness.environment(device)
    records = [harness.make_record(env, provider=name, variant=args.variant, mode="fwd+bwd", dtype=dtype, B=B, T=T,
                                   I=H, H=H, timing=t) for name, t in timings.items()]
    if args.out:
        harness.append_records(records, os.path.join(args.out, "step-graphs.jsonl"))
    direct, graphed = (timings[n].median_ms for n in ("fusedrnn-triton-step", "fusedrnn-triton-step-graphs"))
    print(f"step graphs, triton per-step {args.variant} B={B} T={T} H={H} {args.dtype} fwd+bwd: direct "
          f"{direct:.3f} ms, graphs {graphed:.3f} ms ({direct / graphed:.2f}x); failed captures: "
          f"{len(host.GRAPHS.failed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
