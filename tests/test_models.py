"""Reference models: forward / backward on every CPU backend, and their semantics."""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from fusedrnn import models
from fusedrnn.models.ntm import address
from helpers import TRITON

BACKENDS = [b for b in fusedrnn.available_backends("cpu") if b != "triton"]
REG = dict(recurrent_dropout=0.2, variational=True)


# tiny models: one thread is as fast and does not fight other processes for the cores (conftest.py)
pytestmark = pytest.mark.one_thread



def _make(name, backend, **kw):
    """(model, inputs) of each model, small ("-gru" in the name: cell="gru")."""
    if "-gru" in name:
        name, kw = name.replace("-gru", ""), dict(kw, cell="gru")
    g = torch.Generator().manual_seed(0)
    B, T = 3, 6
    if name == "lm":
        return models.LanguageModel(17, 12, 16, 2, dropout=0.1, backend=backend, **REG, **kw), \
            (torch.randint(0, 17, (B, T), generator=g),)
    if name == "lm-tied":
        return models.LanguageModel(17, 12, 16, 1, tie_weights=True, backend=backend, **REG, **kw), \
            (torch.randint(0, 17, (B, T), generator=g),)
    if name == "tagger":
        return models.SequenceTagger(5, vocab_size=11, embed_size=8, hidden_size=16, backend=backend, **REG, **kw), \
            (torch.randint(0, 11, (B, T), generator=g), torch.tensor([6, 2, 4]))
    if name == "classifier-bn":
        return models.SequenceClassifier(4, input_size=7, hidden_size=16, batch_norm=True, backend=backend, **kw), \
            (torch.randn(B, T, 7, generator=g),)
    if name.startswith("seq2seq"):
        att = name.split(":")[1]
        return models.Seq2Seq(13, 9, 8, 16, attention=att, dropout=0.1, backend=backend, **REG, **kw), \
            (torch.randint(4, 13, (B, 7), generator=g), torch.tensor([7, 3, 5]), torch.randint(1, 9, (B, 5), generator=g))
    if name == "caption":
        return models.CaptionDecoder(20, 9, 8, 16, feed_features=True, feature_hidden=12, backend=backend, **REG, **kw), \
            (torch.randn(B, 20, generator=g), torch.randint(1, 9, (B, 5), generator=g))
    if name == "ntm":
        return models.NTM(5, 4, 16, 10, 6, num_read_heads=2, num_write_heads=2, backend=backend, **REG, **kw), \
            (torch.randn(B, T, 5, generator=g),)
    if name == "stack":
        return models.StackRNN(5, 5, 16, num_stacks=2, stack_width=2, read_depth=2, backend=backend, **REG, **kw), \
            (torch.randn(B, T, 5, generator=g),)
    raise KeyError(name)


MODELS = ["lm", "lm-tied", "tagger", "classifier-bn", "seq2seq:bahdanau", "seq2seq:luong-dot",
          "seq2seq:luong-general", "seq2seq:none", "caption", "ntm", "stack",
          "lm-gru", "tagger-gru", "classifier-bn-gru", "seq2seq-gru:bahdanau"]


def _out(y):
    return y[0] if isinstance(y, tuple) else y


EXPECTED_SHAPE = {"lm": (3, 6, 17), "lm-tied": (3, 6, 17), "tagger": (3, 6, 5), "classifier-bn": (3, 4),
                  "caption": (3, 5, 9), "ntm": (3, 6, 4), "stack": (3, 6, 5)}
# every model on every fused CPU backend; triton (no cell kernel: the LSTM models) through the
# interpreter
TRAIN_CASES = [(b, n) for b in BACKENDS + ["auto"] if b != "reference" for n in MODELS] + \
    ([("triton", n) for n in ("lm", "tagger", "classifier-bn")] if TRITON else [])


def _training_step(name, backend):
    torch.manual_seed(0)
    model, inputs = _make(name, backend)
    model.double().train()
    inputs = tuple(t.double() if t.is_floating_point() else t for t in inputs)
    torch.manual_seed(1)  # the same dropout masks on every backend
    y = _out(model(*inputs))
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    names, params = zip(*model.named_parameters())
    g = torch.autograd.grad((y * w).sum(), params)  # every parameter gets a gradient (no allow_unused)
    return y, dict(zip(names, g))


@pytest.mark.parametrize("backend,name", TRAIN_CASES, ids=[f"{b}-{n}" for b, n in TRAIN_CASES])
def test_training_step_matches_reference(name, backend):
    """A regularized training step (recurrent dropout, variational masks, batch norm where the
    model has it) equals the reference backend's: outputs and every parameter's gradient."""
    y_ref, g_ref = _training_step(name, "reference")
    y, g = _training_step(name, backend)
    assert tuple(y.shape) == EXPECTED_SHAPE.get(name.replace("-gru", ""), (3, 5, 9))
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    assert list(g) == list(g_ref)
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n], rtol=1e-8, atol=1e-9, msg=lambda m: f"grad {n}: {m}")
    assert any(v.abs().sum() > 0 for v in g.values())


@pytest.mark.parametrize("name", MODELS)
def test_backends_agree(name):
    """The backend argument reaches every LSTM / LSTMCell: same weights, same outputs."""
    if len(BACKENDS) < 2:
        pytest.skip("one CPU backend")
    outs = []
    for be in BACKENDS:
        torch.manual_seed(0)
        model, inputs = _make(name, be)
        model.double().eval()
        inputs = tuple(t.double() if t.is_floating_point() else t for t in inputs)
        with torch.no_grad():
            outs.append(_out(model(*inputs)))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-9, atol=1e-9)


def test_gru_models_hold_a_gru():
    """cell="gru" builds fusedrnn.GRU / GRUCell (state h alone); the LSTM keeps its keys."""
    lm, (tok,) = _make("lm-gru", "auto")
    assert isinstance(lm.rnn, fusedrnn.GRU) and lm.rnn is lm.gru and "gru.weight_hh_l0" in lm.state_dict()
    _, state = lm(tok)
    assert torch.is_tensor(state) and state.shape == (2, 3, 16)
    assert lm.sample(tok[:, :2], 3).shape == (3, 5)
    s2s, _ = _make("seq2seq-gru:bahdanau", "auto")
    assert isinstance(s2s.encoder, fusedrnn.GRU) and isinstance(s2s.cell, fusedrnn.GRUCell) and s2s.bridge_c is None
    tagger, _ = _make("tagger-gru", "auto")
    assert isinstance(tagger.encoder.rnn, fusedrnn.GRU)
    with pytest.raises(ValueError, match="cell must be one of"):
        models.LanguageModel(17, 12, 16, cell="rnn")
    with pytest.raises(ValueError, match="GRU has no projection"):
        models.LanguageModel(17, 12, 16, tie_weights=True, cell="gru")


def test_lm_tying_and_sampling():
    lm = models.LanguageModel(17, 12, 16, 1, tie_weights=True)
    assert lm.decoder.weight is lm.embedding.weight and lm.lstm.proj_size == 12
    lm2 = models.LanguageModel(17, 16, 16, 1, tie_weights=True)
    assert lm2.lstm.proj_size == 0
    prefix = torch.tensor([[1, 2], [3, 4]])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s1, s2 = lm.sample(prefix, 7, generator=g1), lm.sample(prefix, 7, generator=g2)
    assert s1.shape == (2, 9) and torch.equal(s1, s2) and torch.equal(s1[:, :2], prefix)
    assert lm.training  # mode restored
    # greedy sampling continues the argmax of a full forward pass
    lm.eval()
    s = lm.sample(prefix, 3, temperature=0)
    logits, _ = lm(s[:, :-1])
    assert torch.equal(logits[:, 1:].argmax(-1), s[:, 2:])


def test_variational_masks_held_per_sequence():
    """Decoders use the cell's held variational mask: one draw per sequence, not per step."""
    for name, cell_attr in [("seq2seq:bahdanau", "cell"), ("ntm", "controller"), ("caption", "cell"),
                            ("stack", "controller")]:
        model, inputs = _make(name, "auto")
        cell = getattr(model, cell_attr)
        calls = []
        orig = cell.sample_mask
        cell.sample_mask = lambda *a, **k: calls.append(1) or orig(*a, **k)
        model.train()
        model(*inputs)
        assert len(calls) == 1, name
        model(*inputs)
        assert len(calls) == 2, f"{name}: a new mask for a new sequence"


def test_tagger_and_classifier_respect_lengths():
    torch.manual_seed(0)
    tagger = models.SequenceTagger(4, input_size=5, hidden_size=8).double().eval()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    y = tagger(x, lengths)
    for i, L in enumerate(lengths.tolist()):
        torch.testing.assert_close(y[i, :L], tagger(x[i:i + 1, :L])[0])
    for pooling in ("last", "max", "mean"):
        clf = models.SequenceClassifier(3, input_size=5, hidden_size=8, pooling=pooling, bidirectional=True).double().eval()
        y = clf(x, lengths)
        for i, L in enumerate(lengths.tolist()):
            torch.testing.assert_close(y[i], clf(x[i:i + 1, :L])[0])
    with pytest.raises(ValueError, match="pooling"):
        models.SequenceClassifier(3, input_size=5, pooling="sum")
    with pytest.raises(ValueError, match="exactly one"):
        models.SequenceTagger(3, vocab_size=4, input_size=5)


@pytest.mark.parametrize("cls,kw", [(models.BahdanauAttention, {}), (models.LuongAttention, {"method": "general"}),
                                    (models.LuongAttention, {"method": "dot"})])
def test_attention_weights(cls, kw):
    torch.manual_seed(0)
    att = cls(6, 6, **kw)
    q, k = torch.randn(2, 6), torch.randn(2, 5, 6)
    v = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    ctx, w = att(q, k, mask, values=v)
    assert ctx.shape == (2, 3) and w.shape == (2, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    assert (w[0, 3:] == 0).all()
    torch.testing.assert_close(ctx, torch.einsum("bs,bsv->bv", w, v))
    ctx2, w2 = att(q, k, mask, values=v, prepared=att.prepare(k))
    torch.testing.assert_close(w2, w)
    if kw.get("method") == "dot":
        with pytest.raises(ValueError, match="query_size == key_size"):
            cls(6, 4, **kw)


@pytest.mark.parametrize("att", ["bahdanau", "luong-dot", "none"])
def test_seq2seq_decoding(att):
    torch.manual_seed(0)
    model, (src, src_len, tgt_in) = _make(f"seq2seq:{att}", "auto")
    model.eval()
    logits, attn = model(src, src_len, tgt_in)
    tokens, attn_g = model.greedy(src, src_len, max_len=6)
    assert tokens.shape[0] == 3 and tokens.shape[1] <= 6
    beam1, _ = model.beam_search(src, src_len, beam_size=1, max_len=6)
    L = min(beam1.shape[1], tokens.shape[1])
    assert torch.equal(beam1[:, :L], tokens[:, :L]), "beam size 1 is greedy"
    beam, scores = model.beam_search(src, src_len, beam_size=4, max_len=6)
    assert beam.shape[0] == 3 and torch.isfinite(scores).all()
    if att != "none":
        assert attn.shape == (3, 5, 7) and attn_g.shape[:2] == tokens.shape
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 5))
        assert (attn[1, :, 3:] == 0).all(), "no attention to padding"
    else:
        assert attn is None
    # greedy equals teacher forcing on its own output
    tf_in = torch.cat([torch.full((3, 1), model.bos_id), tokens[:, :-1]], 1)
    tf_logits, _ = model(src, src_len, tf_in)
    live = torch.ones_like(tokens, dtype=torch.bool)
    for i in range(3):
        eos = (tokens[i] == model.eos_id).nonzero()
        if len(eos):
            live[i, eos[0, 0] + 1:] = False
    assert torch.equal(tf_logits.argmax(-1)[live], tokens[live])
    # teacher forcing < 1 runs and draws from its own predictions
    model.train()
    out, _ = model(src, src_len, tgt_in, teacher_forcing=0.5)
    assert out.shape == logits.shape


def test_caption_greedy_matches_forward():
    torch.manual_seed(0)
    model, (feat, tgt_in) = _make("caption", "auto")
    model.eval()
    tokens = model.greedy(feat, max_len=5)
    tf_in = torch.cat([torch.full((3, 1), model.bos_id), tokens[:, :-1]], 1)
    first = model(feat, tf_in).argmax(-1)[:, 0]
    assert torch.equal(first, tokens[:, 0])


def test_ntm_addressing():
    B, N, M = 2, 6, 4
    mem = torch.eye(N, M).unsqueeze(0).repeat(B, 1, 1) + 0.01
    key = mem[:, 2:3].clone()                          # matches slot 2
    one = torch.ones(B, 1, 1)
    no_shift = torch.tensor([0.0, 1.0, 0.0]).expand(B, 1, 3)
    w_prev = torch.full((B, 1, N), 1.0 / N)
    w = address(key, 50 * one, one, no_shift, one, w_prev, mem)
    assert w.shape == (B, 1, N) and w.argmax(-1).eq(2).all() and w[..., 2].gt(0.9).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B, 1))
    # gate 0: the previous weights; shift +1 moves them one slot (circularly)
    prev = torch.zeros(B, 1, N)
    prev[..., N - 1] = 1
    plus_one = torch.tensor([0.0, 0.0, 1.0]).expand(B, 1, 3)
    w = address(key, one, 0 * one, plus_one, one, prev, mem)
    assert w.argmax(-1).eq(0).all() and w[..., 0].gt(0.99).all()
    # sharpening makes a blurred distribution peakier
    blurred = torch.softmax(torch.randn(B, 1, N), -1)
    w1 = address(key, one, 0 * one, no_shift, one, blurred, mem)
    w3 = address(key, one, 0 * one, no_shift, 3 * one, blurred, mem)
    assert (w3.amax(-1) > w1.amax(-1)).all()
    # memory trace is returned and normalized
    model, (x,) = _make("ntm", "auto")
    y, trace = model(x, return_trace=True)
    torch.testing.assert_close(trace["read_weights"].sum(-1), torch.ones(3, 6, 2), atol=1e-5, rtol=0)
    assert trace["write_weights"].shape == (3, 6, 2, 10)


def test_stack_semantics():
    torch.manual_seed(0)
    model, (x,) = _make("stack", "auto")
    y, trace = model(x, return_trace=True)
    torch.testing.assert_close(trace["actions"].sum(-1), torch.ones(3, 6, 2))
    model.hard_eval = True
    model.eval()
    _, trace = model(x, return_trace=True)
    assert set(trace["actions"].unique().tolist()) <= {0.0, 1.0}
    # a forced push then pop: drive the action layer so "push" wins, then "pop"
    m = models.StackRNN(2, 2, 8, num_stacks=1, stack_width=1, read_depth=2)
    with torch.no_grad():
        m.actions.weight.zero_()
        m.actions.bias.copy_(torch.tensor([50.0, -50.0, -50.0]))   # push
        m.values.weight.zero_()
        m.values.bias.fill_(10.0)                                    # value ~ 1
    _, tr = m(torch.zeros(1, 3, 2), return_trace=True)
    assert tr["top"][0, :, 0, 0].gt(0.99).all()
    with torch.no_grad():
        m.actions.bias.copy_(torch.tensor([-50.0, 50.0, -50.0]))   # pop from an empty stack
    _, tr = m(torch.zeros(1, 3, 2), return_trace=True)
    torch.testing.assert_close(tr["top"][0, :, 0, 0], torch.full((3,), -1.0))
    # long inputs run (the stack grows with T)
    assert m(torch.zeros(1, 70, 2)).shape == (1, 70, 2)


@pytest.mark.gpu
def test_ntm_and_stack_no_host_sync_on_cuda():
    """A step of the NTM / StackRNN forward and backward never waits for the device."""
    dev = torch.device("cuda")
    for name in ("ntm", "stack"):
        model, (x,) = _make(name, "auto")
        model.to(dev)
        x = x.to(dev)
        model(x).sum().backward()            # warm-up (lazy initialization may sync)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
