"""The per-step designs with and without CUDA graphs at one point (the GPU check's stage):

    python -m fusedrnn.bench.step_graphs [--out DIR] [--backends triton,cuda] [--B 16 --T 100 --H 256
                                         --dtype bf16 --variant plain]

Times fusedrnn.LSTM on each GPU backend with its per-step design forced, forward + backward,
launching every step (provider fusedrnn-<backend>-step) and through the captured graphs of
fusedrnn.backends.step_graphs (fusedrnn-<backend>-step-graphs), alternating, with the
repository's harness; appends the records to DIR/step-graphs.jsonl (not the grid's file:
neither is the default path) and prints the ratios.  A backend this machine cannot run (no
CUDA GPU, no triton, a build without CUDA kernels) is skipped with the reason, exit 0 (the
GPU check's dry run).

Dimension letters: T steps, B batch, I = H input and hidden.
"""

from __future__ import annotations

import argparse
import importlib
import os

import torch

from ..backends import step_graphs
from . import harness
from .correctness import forced
from .providers import VARIANTS
from .suite import DTYPES


CACHE_MODULES = {"triton": "fusedrnn.backends.triton.host", "cuda": "fusedrnn.backends.cuda"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fusedrnn.bench.step_graphs")
    ap.add_argument("--out", default=None)
    ap.add_argument("--backends", default="triton,cuda")
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--variant", default="plain", choices=sorted(VARIANTS))
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in CACHE_MODULES]
    if bad:
        ap.error(f"--backends: {bad} (choose from {sorted(CACHE_MODULES)})")
    from .. import LSTM, available_backends

    if not torch.cuda.is_available():
        print("step graphs: needs a CUDA GPU: skipped")
        return 0
    device, dtype = torch.device("cuda"), DTYPES[args.dtype]
    B, T, H = args.B, args.T, args.H
    env = harness.environment(device)
    for backend in backends:
        if backend not in available_backends("cuda"):
            print(f"step graphs, {backend}: not available here: skipped")
            continue
        graphs_cache = importlib.import_module(CACHE_MODULES[backend]).GRAPHS
        if graphs_cache is None:  # a fusedrnn._C older than its Python side
            print(f"step graphs, {backend}: this build has no graphed route (rebuild fusedrnn._C): skipped")
            continue
        torch.manual_seed(0)
        m = LSTM(H, H, backend=backend, bn_max_steps=T, **VARIANTS[args.variant]).to(device=device, dtype=dtype)
        m.train()
        x = torch.randn(T, B, H, device=device, dtype=dtype)
        gy = torch.randn(T, B, H, device=device, dtype=dtype)
        params = list(m.parameters())

        def run(graphs: bool):
            def fn(k: int) -> None:
                with step_graphs.enabled(graphs), forced(backend, "step"):
                    for p in params:
                        p.grad = None
                    m(x)[0].backward(gy)
            return fn

        names = {False: f"fusedrnn-{backend}-step", True: f"fusedrnn-{backend}-step-graphs"}
        try:
            timings = harness.time_group({names[g]: run(g) for g in (False, True)}, device, warmup=3, reps=args.reps)
        finally:
            failed = dict(graphs_cache.failed)
            graphs_cache.clear()
        records = [harness.make_record(env, provider=name, variant=args.variant, mode="fwd+bwd", dtype=dtype, B=B,
                                       T=T, I=H, H=H, timing=t) for name, t in timings.items()]
        if args.out:
            harness.append_records(records, os.path.join(args.out, "step-graphs.jsonl"))
        direct, graphed = timings[names[False]].median_ms, timings[names[True]].median_ms
        print(f"step graphs, {backend} per-step {args.variant} B={B} T={T} H={H} {args.dtype} fwd+bwd: direct "
              f"{direct:.3f} ms, graphs {graphed:.3f} ms ({direct / graphed:.2f}x); failed captures: "
              f"{failed or 0}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
