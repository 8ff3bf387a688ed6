"""The recompute mode (``recompute=True``): with batch norm or layer norm, the native CPU
backward rebuilds N_h's normalised products per chunk of steps (one GEMM over the chunk's
saved h_{s-1} m_s) instead of keeping [T, B, G] of them from the forward.

- The same results as without it, on the default construction (no ``backend=``): LSTM and
  GRU, batch norm in training and eval, layer norm, two layers, both directions, lengths, a
  projection, float64 and float32 (the fused steps), over several chunks of the backward's ring.
- What autograd keeps shrinks by exactly one [T, B, G] tensor per layer and direction.
- The rule of which kernel gets the mode (the CPU's; the Triton host refuses it, explain()
  says where it runs), the option's checks, repr and convert, torch.compile, and a reference
  model built under fusedrnn.patch(recompute=True).
The peak-memory target (v+bn with recompute <= 1.3x plain at T = 4096) is in
test_determinism_memory.py; the float64 oracle rows in test_option_matrix.py.
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from fusedrnn.backends.compiled.layer import save_mode
from fusedrnn.core import schema
from fusedrnn.core.contract import Config, NormMode, RecurrentLN

T, B, I, H = 40, 32, 6, 12  # B = 32: the backward's ring holds 16 steps, so 40 steps are three chunks
NORMS = {"bn-train": dict(batch_norm=True, bn_max_steps=T), "bn-eval": dict(batch_norm=True, bn_max_steps=30),
         "ln": dict(layer_norm=True)}


def _run(cls, recompute: bool, dtype, norm: str, lengths: bool, proj: int = 0):
    torch.manual_seed(0)
    kw = dict(NORMS[norm], recurrent_dropout=0.25, variational=True, num_layers=2, bidirectional=True)
    if proj:
        kw["proj_size"] = proj
    m = cls(I, H, dtype=dtype, recompute=recompute, **kw).train(norm != "bn-eval")
    if norm == "bn-eval":
        with torch.no_grad():
            for name, b in m.named_buffers():
                b.copy_(0.5 + torch.rand(b.shape, dtype=dtype))
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    L = 1 + torch.arange(B) * 7 % T if lengths else None
    torch.manual_seed(1)  # the same masks in both runs
    y, state = m(x, lengths=L)
    state = state if isinstance(state, tuple) else (state,)
    (y.sin().sum() + sum(s.cos().sum() for s in state)).backward()
    return [y, *state, x.grad] + [p.grad for p in m.parameters()] + list(m.buffers())


CASES = [(cls, norm, lengths, proj) for cls in (fusedrnn.LSTM, fusedrnn.GRU) for norm in NORMS
         for lengths, proj in ((False, 0), (True, 0), (True, 5)) if not (proj and cls is fusedrnn.GRU)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cls,norm,lengths,proj", CASES,
                         ids=[f"{c.__name__}-{n}{'-lengths' if ln else ''}{'-proj' if p else ''}"
                              for c, n, ln, p in CASES])
def test_recompute_gives_the_same_results(cls, norm, lengths, proj, dtype):
    saved = _run(cls, False, dtype, norm, lengths, proj)
    rebuilt = _run(cls, True, dtype, norm, lengths, proj)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(saved, rebuilt):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


def _saved_bytes(cls, recompute: bool, **options) -> int:
    """The bytes of the distinct storages autograd keeps for the backward of one forward."""
    torch.manual_seed(0)
    m = cls(I, H, num_layers=2, bidirectional=True, recompute=recompute, **options)
    x = torch.randn(T, B, I, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    return sum(storages.values())


@pytest.mark.parametrize("cls", [fusedrnn.LSTM, fusedrnn.GRU], ids=lambda c: c.__name__)
@pytest.mark.parametrize("options", [dict(batch_norm=True), dict(layer_norm=True)], ids=["bn", "ln"])
def test_recompute_keeps_one_gate_tensor_less_per_layer_and_direction(cls, options):
    G = (4 if cls is fusedrnn.LSTM else 3) * H
    less = _saved_bytes(cls, False, **options) - _saved_bytes(cls, True, **options)
    assert less == 2 * 2 * T * B * G * 4  # layers x directions x [T, B, G] float32


def test_the_mode_goes_to_the_cpu_kernel_only():
    """The CUDA kernel keeps its workspace whole (it has no recompute mode); without autograd
    nothing is saved."""
    norm = RecurrentLN(None, None, None, None, None, None, 1e-5, recompute=True)
    plain = RecurrentLN(None, None, None, None, None, None, 1e-5)
    cpu = Config.build("cpu", torch.float32, T, B, H, H, norm=NormMode.LAYER, requires_grad=True)
    cuda = Config.build("cuda", torch.float32, T, B, H, H, norm=NormMode.LAYER, requires_grad=True, arch="sm_90")
    assert save_mode(cpu, norm) == schema.SAVE_RECOMPUTE_NORM
    assert save_mode(cpu, plain) == save_mode(cuda, norm) == schema.SAVE_ALL
    assert save_mode(Config.build("cpu", torch.float32, T, B, H, H, norm=NormMode.LAYER), norm) == schema.SAVE_NONE


def test_option_checks_repr_and_convert():
    with pytest.raises(TypeError, match="recompute should be of type bool"):
        fusedrnn.LSTM(4, 8, recompute=1)
    m = fusedrnn.GRU(4, 8, batch_norm=True, recompute=True)
    assert "recompute=True" in repr(m) and m._norm_state("_l0").recompute
    assert "recompute" not in repr(fusedrnn.LSTM(4, 8, batch_norm=True))
    lstm = torch.nn.LSTM(4, 8)
    converted = fusedrnn.convert(lstm, layer_norm=True, recompute=True)
    assert converted.recompute and converted._norm_state("_l0").recompute


def test_kernels_without_the_mode_refuse_it_and_explain_says_where_it_runs():
    from fusedrnn.backends.triton import host

    with pytest.raises(RuntimeError, match="save_workspace must be 0 or 1"):
        host._saves(schema.SAVE_RECOMPUTE_NORM)
    x = torch.randn(5, 3, 4)
    assert "recompute: N_h's x_hat rebuilt in the backward" in fusedrnn.explain(
        fusedrnn.LSTM(4, 8, batch_norm=True, recompute=True), x)
    assert "recompute: not on reference" in fusedrnn.explain(
        fusedrnn.GRU(4, 8, layer_norm=True, recompute=True, backend="reference"), x)
    with torch.no_grad():  # nothing is saved without a backward
        assert "recompute:" not in fusedrnn.explain(fusedrnn.LSTM(4, 8, batch_norm=True, recompute=True), x)


def test_recompute_under_torch_compile():
    """One graph (aot_eager, fullgraph): the fake kernel gives ws_hh_hat's empty shape, and the
    compiled step's outputs and gradients are eager's.  (The GRU's fake kernel in this mode:
    opcheck in test_gru_ops.py::test_recompute_mode.)"""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = fusedrnn.LSTM(3, 4, num_layers=2, dtype=torch.float64, recurrent_dropout=0.25, recompute=True,
                      batch_norm=True, bn_max_steps=4, proj_size=3)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)

    def run(mod):
        torch.manual_seed(1)
        y, (h, _) = mod(x)
        return [y, *torch.autograd.grad(y.sin().sum() + h.sum(), [x, *m.parameters()])]

    want = run(m)
    got = run(torch.compile(m, fullgraph=True, backend="aot_eager"))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()


def test_a_reference_model_built_under_patch_recomputes_with_the_same_gradients():
    """The reference models take the option from an active fusedrnn.patch: a two-layer
    language model with batch norm and tied weights trains to the same gradients."""
    from fusedrnn.models import LanguageModel

    def grads(recompute):
        torch.manual_seed(0)
        with fusedrnn.patch(recompute=recompute):
            m = LanguageModel(50, embed_size=16, hidden_size=24, num_layers=2, recurrent_dropout=0.2,
                              batch_norm=True, tie_weights=True)
        assert m.rnn.recompute is recompute
        tokens = torch.randint(0, 50, (32, 20))
        torch.manual_seed(1)
        logits, _ = m(tokens)
        torch.nn.functional.cross_entropy(logits.reshape(-1, 50), tokens.roll(-1, 1).reshape(-1)).backward()
        return [p.grad for p in m.parameters()]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
