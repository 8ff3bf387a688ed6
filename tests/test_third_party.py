"""Third-party code patterns that must train the model the user asked for:

- ``convert()`` / ``patch()`` on models whose parameters something already holds: frozen
  weights, an optimizer (with state) built before converting, weights shared between cells
  or tied around the LSTM, parameter hooks and order (DDP buckets), state_dict round trips;
- cells in loops that never call ``reset()``: the boundary rule (where a sequence starts)
  for stacked cells, zero state per batch, free-running continuation, beam search, an
  encoder's state handed to a decoder, truncated BPTT, finished rows.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn.modules.lstm import LSTM as FusedLSTM

# ---- convert(): the original parameters, adopted ----------------------------------------------


class LM(nn.Module):
    """pytorch/examples' word language model: embedding, LSTM, decoder tied to the embedding."""

    def __init__(self, vocab=20, hidden=8):
        super().__init__()
        self.encoder = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, 2, dropout=0.2)
        self.decoder = nn.Linear(hidden, vocab)
        self.decoder.weight = self.encoder.weight  # tied

    def forward(self, x):
        y, _ = self.rnn(self.encoder(x))
        return self.decoder(y)


def _train_step(model, opt, x):
    opt.zero_grad()
    out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    out.square().mean().backward()
    opt.step()


# (torch's module by name, looked up in torch.nn when built so that patch() swaps it; ours; the
# options convert() / patch() add): the LSTM and the GRU
CELLS = {"lstm": ("LSTM", FusedLSTM, dict(recurrent_dropout=0.2, variational=True)),
         "gru": ("GRU", fusedrnn.GRU, dict(recurrent_dropout=0.3, variational=True, zoneout=0.1))}


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("how", ["convert", "patch"])
def test_frozen_weight_and_an_optimizer_built_before_keep_working(how, cell):
    """convert() after the optimizer (or patch() around the construction) adopts the original
    parameters, and a frozen weight stays frozen, for the LSTM and the GRU."""
    torch.manual_seed(0)
    name, ours, opts = CELLS[cell]
    if how == "convert":
        m = nn.Sequential(getattr(nn, name)(4, 8, batch_first=True))
    else:
        with fusedrnn.patch(**opts):
            m = nn.Sequential(getattr(nn, name)(4, 8, batch_first=True))
    m[0].weight_ih_l0.requires_grad_(False)
    frozen = m[0].weight_ih_l0.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    held = list(m.parameters())
    if how == "convert":
        fusedrnn.convert(m, **opts)
    assert isinstance(m[0], ours)
    assert not m[0].weight_ih_l0.requires_grad
    assert all(a is b for a, b in zip(held, m.parameters()))
    before = m[0].weight_hh_l0.detach().clone()
    _train_step(m, opt, torch.randn(3, 5, 4))
    assert not torch.equal(before, m[0].weight_hh_l0), "the optimizer no longer trains the model"
    assert torch.equal(frozen, m[0].weight_ih_l0)


def test_adam_state_follows_the_parameters_through_convert():
    torch.manual_seed(0)
    m = LM()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    x = torch.randint(0, 20, (6, 3))
    _train_step(m, opt, x)
    steps = {id(p): int(opt.state[p]["step"]) for p in m.parameters()}
    fusedrnn.convert(m, recurrent_dropout=0.25, variational=True)
    _train_step(m, opt, x)
    assert all(int(opt.state[p]["step"]) == steps[id(p)] + 1 for p in m.parameters())
    assert m.decoder.weight is m.encoder.weight  # the tie around the LSTM holds


def test_parameter_order_sharing_hooks_and_state_dict():
    torch.manual_seed(0)
    m = nn.ModuleDict({"a": nn.LSTMCell(3, 4), "b": nn.LSTMCell(3, 4), "lstm": nn.LSTM(3, 4, 2, proj_size=2)})
    m["b"].weight_hh = m["a"].weight_hh  # shared between two cells
    seen = []
    m["lstm"].weight_hh_l1.register_hook(lambda g: seen.append("param hook"))
    m["lstm"].register_forward_hook(lambda mod, i, o: seen.append("forward hook"))
    names = [n for n, _ in m.named_parameters()]
    objects = list(m.parameters())
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    rng = torch.get_rng_state()
    fusedrnn.convert(m)
    assert torch.equal(rng, torch.get_rng_state())  # converting draws nothing
    assert [n for n, _ in m.named_parameters()] == names  # DDP buckets and optimizers see one order
    assert all(a is b for a, b in zip(objects, m.parameters()))
    assert m["b"].weight_hh is m["a"].weight_hh
    assert sd.keys() == m.state_dict().keys() and all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    y, (h, c) = m["lstm"](torch.randn(5, 2, 3))
    (y.sum() + c.sum()).backward()
    assert seen == ["forward hook", "param hook"]
    back = nn.LSTM(3, 4, 2, proj_size=2)
    back.load_state_dict(m["lstm"].state_dict())  # both ways, unchanged


def test_convert_keeps_dtype_device_and_mode_and_refuses_parametrized_weights():
    m = nn.LSTM(3, 4, dtype=torch.float64).eval()
    new = fusedrnn.convert(m, batch_norm=True)
    assert new.weight_hh_l0 is m.weight_hh_l0 and not new.training
    assert new.bn_h_weight_l0.dtype == torch.float64 and torch.all(new.bn_h_weight_l0 == 0.1)
    assert torch.all(new.bn_c_running_var_l0 == 1)
    torch.testing.assert_close(new(torch.randn(5, 2, 3, dtype=torch.float64))[0].shape, (5, 2, 4), rtol=0, atol=0)
    p = nn.utils.parametrizations.weight_norm(nn.LSTM(3, 4), "weight_hh_l0")
    with pytest.raises(ValueError, match="parametrized"):
        fusedrnn.convert(p)


# ---- cells in loops that never call reset() ----------------------------------------------------


class Sequence(nn.Module):
    """pytorch/examples' time-sequence-prediction model: two stacked cells fed their own
    states, a zero state per batch, and a free-running continuation after the observed steps."""

    def __init__(self):
        super().__init__()
        self.lstm1 = nn.LSTMCell(1, 6)
        self.lstm2 = nn.LSTMCell(6, 6)
        self.linear = nn.Linear(6, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), 6)
        c_t = torch.zeros(input.size(0), 6)
        h_t2 = torch.zeros(input.size(0), 6)
        c_t2 = torch.zeros(input.size(0), 6)
        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for _ in range(future):
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        return torch.cat(outputs, dim=1)


def test_examples_loop_gets_a_mask_and_a_step_count_per_sequence():
    """Under patch(recurrent_dropout, variational, batch_norm): one mask per sequence (not one
    for the whole training), the batch-norm step counter restarting with each sequence, and a
    free-running continuation inside its sequence."""
    torch.manual_seed(0)
    with fusedrnn.patch(recurrent_dropout=0.5, variational=True, batch_norm=True, weight_dropout=0.3):
        model = Sequence()
    assert isinstance(model.lstm1, fusedrnn.LSTMCell)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    masks, weight_masks = [], []
    for _ in range(3):
        opt.zero_grad()
        out = model(torch.randn(4, 5))
        assert model.lstm1._step == 5 and model.lstm2._step == 5
        masks.append(model.lstm1._mask.clone())
        weight_masks.append(model.lstm2._weight_mask.clone())
        out.square().mean().backward()
        opt.step()
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert not torch.equal(weight_masks[0], weight_masks[1])
    model(torch.randn(4, 5), future=3)
    assert model.lstm1._step == 8  # the continuation is the same sequence
    import copy
    import io

    copy.deepcopy(model)  # mid-sequence: the cell's hold on its last state does not travel
    torch.save(model, io.BytesIO())
    model.eval()
    with torch.no_grad():
        model(torch.randn(4, 5))
    assert model.lstm1._step == 5


def test_gru_cell_loop_without_reset():
    """A GRUCell loop that starts from a zero state per batch and never calls reset() gets one
    variational mask and one batch-norm step count per sequence."""
    torch.manual_seed(0)
    with fusedrnn.patch(recurrent_dropout=0.5, variational=True, batch_norm=True):
        cell, head = nn.GRUCell(1, 6), nn.Linear(6, 1)
    assert isinstance(cell, fusedrnn.GRUCell)
    opt = torch.optim.SGD(list(cell.parameters()) + list(head.parameters()), lr=0.01)
    masks = []
    for _ in range(2):
        opt.zero_grad()
        x, h, outs = torch.randn(4, 5), torch.zeros(4, 6), []
        for x_t in x.split(1, dim=1):
            h = cell(x_t, h)
            outs.append(head(h))
        assert cell._step == 5
        masks.append(cell._mask.clone())
        torch.cat(outs, 1).square().mean().backward()
        opt.step()
    assert not torch.equal(masks[0], masks[1])


def _cell(**kw):
    torch.manual_seed(0)
    return fusedrnn.LSTMCell(3, 4, recurrent_dropout=0.5, variational=True, batch_norm=True, **kw)


def test_beam_search_reorders_its_own_state_within_the_sequence():
    cell = _cell()
    x = torch.randn(6, 3)
    hx = cell(x)
    mask = cell._mask
    for _ in range(3):  # training, with autograd: the reordered state descends from the cell's
        idx = torch.randint(0, 6, (6,))
        hx = cell(x, (hx[0].index_select(0, idx), hx[1].index_select(0, idx)))
    assert cell._step == 4 and cell._mask is mask
    cell.eval()
    with torch.no_grad():  # eval, no autograd record: rows equal to the cell's own
        hx = cell(x)
        for _ in range(3):
            idx = torch.tensor([0, 0, 2, 1, 5, 5])
            hx = (hx[0][idx], hx[1][idx])
            hx = cell(x, hx)
    assert cell._step == 4  # batch norm's eval step index did not restart


def test_encoder_state_starts_a_decoder_sequence_and_tbptt_continues():
    enc = fusedrnn.LSTMCell(3, 4)
    dec = _cell()
    x = torch.randn(2, 3)
    hx = dec(x)
    hx = dec(x, hx)
    assert dec._step == 2
    mask = dec._mask
    hx = dec(x, enc(x))  # another module's state: a new sequence
    assert dec._step == 1 and dec._mask is not mask
    mask = dec._mask
    hx = dec(x, (hx[0].detach(), hx[1].detach()))  # truncated BPTT: the same sequence
    keep = torch.tensor([[True], [False]])
    hx = dec(x, (torch.where(keep, hx[0], torch.zeros_like(hx[0])), hx[1]))  # finished rows zeroed
    hx = dec(x, (hx[0].clone(), hx[1].clone()))
    assert dec._step == 4 and dec._mask is mask
    dec(x, (torch.zeros(2, 4), torch.zeros(2, 4)))  # a fresh zero state
    assert dec._step == 1 and dec._mask is not mask


def test_none_mode_switch_and_explicit_reset_start_a_sequence():
    cell = _cell()
    x = torch.randn(2, 3)
    hx = cell(x, cell(x))
    assert cell._step == 2
    hx = cell(x, None)
    assert cell._step == 1
    cell.eval().train()
    cell(x, hx)
    assert cell._step == 1
    hx = cell(x)
    cell.reset()  # explicit reset wins over a continuing state
    cell(x, hx)
    assert cell._step == 1
    cell(x, step=7)  # hx=None: a new sequence; an explicit step index leaves the counter alone
    assert cell._step == 0


def test_explain_names_the_cell_rule():
    report = fusedrnn.explain(nn.Sequential(_cell()), torch.randn(2, 3))
    assert "sequence boundary" in report and "reset()" in report
    plain = fusedrnn.explain(nn.Sequential(fusedrnn.LSTMCell(3, 4)), torch.randn(2, 3))
    assert "no per-sequence state" in plain
