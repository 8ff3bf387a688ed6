"""Benchmark providers: what is timed, built for one (variant, mode, shape, dtype, device).

Providers (docs/guide.md, "Benchmark records"):
  fusedrnn-<backend>   fusedrnn.LSTM (or GRU) on that backend (every variant)
  cudnn / torch-cpu    torch.nn.LSTM (or nn.GRU) on CUDA (cuDNN) / on CPU (oneDNN): plain only
  loop                 the per-step loop of fusedrnn.bench.loop (LSTM or GRU; the variants it has)
Variants: plain, variational (recurrent_dropout=0.25, shared masks), bn (recurrent batch
norm), variational+bn, zoneout, weight_dropout, layer_norm; a GRU's are the same names
after "gru:" (gru:plain, gru:zoneout, ...).  Modes: fwd (training-mode forward under no_grad), fwd+bwd, infer
(eval mode under no_grad: inference, batch norm on its running statistics).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..modules import GRU, LSTM, LSTMCell
from ..ops.decision import available_backends, explain_config
from ..modules._torch import TorchGRU, TorchLSTM, TorchLSTMCell
from .loop import LoopGRU, LoopLSTM

VARIANTS = {
    "plain": {},
    "variational": dict(recurrent_dropout=0.25, variational=True),
    "bn": dict(batch_norm=True),
    "variational+bn": dict(recurrent_dropout=0.25, variational=True, batch_norm=True),
    "zoneout": dict(zoneout=0.1),
    "weight_dropout": dict(weight_dropout=0.25),
    "layer_norm": dict(layer_norm=True),
}
LOOP_OPTIONS = ("recurrent_dropout", "variational", "batch_norm")  # what the Python loop baseline implements
GRU_PREFIX = "gru:"
MODES = ("fwd", "fwd+bwd", "infer")
DEFAULT_MODES = ("fwd", "fwd+bwd")


def split_variant(variant: str) -> tuple[str, str]:
    """"gru:zoneout" -> ("gru", "zoneout"); "zoneout" -> ("lstm", "zoneout")."""
    if variant.startswith(GRU_PREFIX):
        return "gru", variant[len(GRU_PREFIX):]
    return "lstm", variant


def plain_of(variant: str) -> str:
    """The plain variant of the same cell: what a regularized variant is compared with."""
    return GRU_PREFIX + "plain" if variant.startswith(GRU_PREFIX) else "plain"


def torch_provider_name(device: torch.device) -> str:
    return "cudnn" if device.type == "cuda" else "torch-cpu"


def providers_for(device: torch.device, backends: Optional[list[str]] = None,
                  include_loop: bool = True) -> list[str]:
    names = [torch_provider_name(device)]
    if backends is None:  # the reference backend is the oracle, not a contender on a GPU
        backends = [b for b in available_backends(device) if device.type == "cpu" or b != "reference"]
    for b in backends:
        names.append(f"fusedrnn-{b}")
    if include_loop:
        names.append("loop")
    return names


def supports(provider: str, variant: str) -> bool:
    rnn, base = split_variant(variant)
    if provider in ("cudnn", "torch-cpu"):
        return base == "plain"
    if provider == "loop":
        return all(k in LOOP_OPTIONS for k in VARIANTS[base])
    return True


def serves(provider: str, variant: str, B: int, T: int, I: int, H: int, dtype, device) -> Optional[str]:
    """None if the provider can run this point, else why not (a backend may be available on
    the device but not serve the layer recurrence, or not this configuration)."""
    rnn, base = split_variant(variant)
    if not supports(provider, variant):
        if provider == "loop":
            return f"the loop baseline has no {variant}"
        return f"torch.nn.{rnn.upper()} has none of fusedrnn's regularizers"
    if not provider.startswith("fusedrnn-"):
        return None
    m = (GRU if rnn == "gru" else LSTM)(I, H, backend=provider[len("fusedrnn-"):], **VARIANTS[base]).train()
    x = torch.empty(T, B, I, dtype=dtype, device=device)
    for _, cfg in m.layer_configs(x):
        why = explain_config(m.backend, cfg)[0][1]
        if why is not None:
            return why
    return None


def build_module(provider: str, variant: str, I: int, H: int, T: int, dtype, device, layers: int = 1) -> nn.Module:
    torch.manual_seed(0)
    rnn, base = split_variant(variant)
    opts = VARIANTS[base]
    if provider in ("cudnn", "torch-cpu"):
        m = (TorchGRU if rnn == "gru" else TorchLSTM)(I, H, layers)
    elif provider == "loop":
        m = (LoopGRU if rnn == "gru" else LoopLSTM)(I, H, recurrent_dropout=opts.get("recurrent_dropout", 0.0),
                     variational=opts.get("variational", False), batch_norm=opts.get("batch_norm", False),
                     max_steps=T)
    elif provider.startswith("fusedrnn-"):
        m = (GRU if rnn == "gru" else LSTM)(I, H, layers, backend=provider[len("fusedrnn-"):], bn_max_steps=max(T, 1), **opts)
    else:
        raise ValueError(f"unknown provider {provider!r}")
    return m.to(device=device, dtype=dtype).train()


def build_layer_fn(provider: str, variant: str, mode: str, B: int, T: int, I: int, H: int, dtype,
                   device, rotate: int = 1, layers: int = 1) -> Callable[[int], None]:
    """fn(k): one forward (or forward + backward) of an LSTM or GRU (the variant says; one layer
    unless ``layers``) on input set k."""
    if provider == "loop" and layers != 1:
        raise ValueError("the loop provider is one layer")
    m = build_module(provider, variant, I, H, T, dtype, device, layers)
    g = torch.Generator(device=device).manual_seed(1)  # drawn where they are used: B=256 T=1024 sets are 200M floats
    xs = [torch.randn(T, B, I, generator=g, device=device).to(dtype) for _ in range(rotate)]
    if mode in ("fwd", "infer"):
        m.train(mode == "fwd")

        def fn(k: int) -> None:
            with torch.no_grad():
                m(xs[k])
        return fn
    gys = [torch.randn(T, B, H, generator=g, device=device).to(dtype) for _ in range(rotate)]
    params = list(m.parameters())

    def fn_bwd(k: int) -> None:
        for p in params:
            p.grad = None
        y = m(xs[k])[0]
        y.backward(gys[k])
    return fn_bwd


def build_cell_fn(provider: str, variant: str, mode: str, B: int, H: int, dtype, device,
                  rotate: int = 1) -> Callable[[int], None]:
    """fn(k): one LSTMCell step (I = H), as decoders and NTM controllers use it."""
    torch.manual_seed(0)
    opts = {k: v for k, v in VARIANTS[variant].items()}
    if provider in ("cudnn", "torch-cpu"):
        cell = TorchLSTMCell(H, H)
    else:
        cell = LSTMCell(H, H, backend=provider[len("fusedrnn-"):], **opts)
    cell = cell.to(device=device, dtype=dtype).train()
    g = torch.Generator(device=device).manual_seed(1)
    mk = lambda: torch.randn(B, H, generator=g, device=device).to(dtype)  # noqa: E731
    sets = [(mk(), (mk(), mk()), mk()) for _ in range(rotate)]
    is_fused = isinstance(cell, LSTMCell)

    def fn(k: int) -> None:
        x, hx, gh = sets[k]
        if is_fused:
            cell.reset()
        if mode in ("fwd", "infer"):
            cell.train(mode == "fwd")
            with torch.no_grad():
                cell(x, hx)
        else:
            cell.zero_grad(set_to_none=True)
            cell(x, hx)[0].backward(gh)
    return fn
