"""A quick timing of the triton designs against cuDNN on the current GPU.

    python -m fusedrnn.backends.triton.selfcheck [--quick]

Medians of triton.testing.do_bench (events, warm-up first) for the recurrence of one
layer (fusedrnn.LSTM with backend="triton", one design at a time via
recurrence.DESIGN) and torch.nn.LSTM (cuDNN) on the same input, forward and
forward+backward, alternating providers within each problem.  Prints one line per
measurement and the device, torch and triton versions.  Not the project's benchmark suite
(fusedrnn.bench); a check that the designs run and what they cost.
"""

from __future__ import annotations

import argparse
import importlib

import torch
import triton
from torch import nn

import fusedrnn

TR = importlib.import_module("fusedrnn.backends.triton.recurrence")
C = importlib.import_module("fusedrnn.backends.triton.config")

PROBLEMS = [  # (T, B, I, H, dtype, batch_norm)
    (100, 64, 512, 512, torch.bfloat16, False),
    (100, 32, 256, 256, torch.bfloat16, True),
    (100, 16, 1024, 1024, torch.float16, False),
    (50, 256, 512, 512, torch.bfloat16, False),
]


def _time(fn, backward: bool) -> float:
    def run():
        y, (h, c) = fn()
        if backward:
            (y.float().sum() + c.float().sum()).backward()
    return triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first two problems only")
    a = ap.parse_args(argv)
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name} sms={p.multi_processor_count} torch {torch.__version__} "
          f"triton {triton.__version__} autotune={TR.AUTOTUNE}")
    for T, B, I, H, dt, bn in PROBLEMS[:2] if a.quick else PROBLEMS:
        torch.manual_seed(0)
        x = torch.randn(T, B, I, device="cuda", dtype=dt, requires_grad=True)
        ref = nn.LSTM(I, H, device="cuda", dtype=dt)
        mods = {"cudnn": ref}
        for design in ("auto", "step"):
            m = fusedrnn.LSTM(I, H, device="cuda", dtype=dt, batch_norm=bn, backend="triton")
            m.load_state_dict(ref.state_dict(), strict=False)
            mods[design] = m
        shape = C.Shape(B=B, H=H, R=H, proj=False, bn=bn, esize=dt.itemsize)
        plan = C.plan(shape, C.Device.of(x.device, False))
        for mode in ("fwd", "fwd+bwd"):
            res = {}
            for name, m in mods.items():
                if name == "cudnn" and bn:
                    continue
                if name != "cudnn":
                    TR.DESIGN = name
                res[name] = _time(lambda: m(x), mode == "fwd+bwd")
            TR.DESIGN = "auto"
            base = res.get("cudnn")
            line = " ".join(f"{k}={v:.3f}ms" + (f"({v / base:.2f}x)" if base else "")
                            for k, v in res.items())
            print(f"T={T} B={B} I={I} H={H} {str(dt)[6:]} bn={bn} {mode}: {line}  "
                  f"[auto={plan.design} nprog={plan.nprog} BB={plan.BB} BH={plan.BH} "
                  f"resident={plan.resident}]", flush=True)


if __name__ == "__main__":
    main()
