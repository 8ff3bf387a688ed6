"""Model-level benchmark: the training-step time of the reference models on fusedrnn
against the same model on torch.nn.LSTM / nn.LSTMCell (``--preset models``), and the cost of
dropping fusedrnn into a third party's model (pytorch/examples' word language model put
through ``fusedrnn.convert``, :func:`dropin_word_lm`).

A step is what the trainer does: a batch of the task, the objective's loss, backward and
an Adam step.  The torch baseline is the same model with every fusedrnn.LSTM swapped for an
nn.LSTM and every fusedrnn.LSTMCell for an nn.LSTMCell holding the same weights, so the
difference is the recurrent layers alone.  Records use the benchmark record keys with
variant = "model:<task>/<model>" and mode = "train-step"; B is the batch size, T the
task's sequence length, I = H the recurrent hidden size.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..modules import LSTM, LSTMCell
from ..modules._torch import TorchLSTM, TorchLSTMCell
from ..modules.rnn import torch_forward_padded
from .. import tasks as tasks_mod
from ..train import build_model, make_objective
from ..tasks import to_device
from . import harness

# (task, model, batch size, model overrides): seq2seq with attention, NTM, language model,
# without the fusedrnn-only regularizers so that torch's modules can run the same model.
_PLAIN = dict(recurrent_dropout=0.0, variational=False, batch_norm=False)
MODEL_POINTS = [
    ("dates", "bahdanau", 64, _PLAIN),
    ("copy", "ntm", 32, _PLAIN),
    ("char-lm", "lm", 32, _PLAIN),
]


class _TorchLSTM(TorchLSTM):
    """nn.LSTM taking the padded input + ``lengths=`` the models pass (packed inside)."""

    def forward(self, input, hx=None, *, lengths=None):
        if lengths is None:
            return super().forward(input, hx)
        return torch_forward_padded(self, input, hx, lengths, TorchLSTM)


class _TorchCell(TorchLSTMCell):
    """nn.LSTMCell with the no-op per-sequence reset() the models call."""

    def reset(self) -> None:
        pass


def to_torch_modules(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every fusedrnn.LSTM / LSTMCell replaced by torch's own (same
    weights).  Only for models without fusedrnn-only regularizers."""
    model = copy.deepcopy(model)

    def swap(m: nn.Module) -> nn.Module:
        w = next(m.parameters())
        kw = dict(device=w.device, dtype=w.dtype)
        if isinstance(m, LSTM):
            if m.regularized() or m.batch_norm:
                raise ValueError("the model uses fusedrnn-only regularizers")
            new = _TorchLSTM(m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, float(m.dropout),
                          m.bidirectional, m.proj_size, **kw)
        else:
            if m.recurrent_dropout or m.batch_norm:
                raise ValueError("the model uses fusedrnn-only regularizers")
            new = _TorchCell(m.input_size, m.hidden_size, m.bias, **kw)
        new.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("bn_")})
        return new.train(m.training)

    def walk(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, (LSTM, LSTMCell)):
                setattr(parent, name, swap(child))
            else:
                walk(child)

    walk(model)
    return model


def _step_fn(model: nn.Module, objective, batches: list, device) -> callable:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def fn(k: int) -> None:
        b = batches[k]
        model.train()
        loss = objective.loss(model, b) / max(objective.count(b), 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return fn


class WordLM(nn.Module):
    """pytorch/examples' word language model as its script writes it (nn.LSTM built by the
    third party): embedding, dropout, a 2-layer LSTM, dropout, decoder; the hidden state carried
    from batch to batch (detached)."""

    def __init__(self, ntoken: int = 10_000, ninp: int = 100, nhid: int = 100, nlayers: int = 2,
                 dropout: float = 0.5):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        return self.decoder(self.drop(output)), hidden


def dropin_word_lm(device: torch.device, reps: int, budget_s: Optional[float], env: dict) -> list[dict]:
    """The cost of dropping fusedrnn in: the word LM above (B=20, T=35, H=100, 2 layers, 10k
    words) as written, against a copy put through fusedrnn.convert() (the default backend),
    one training step each as the example's loop takes it (SGD by hand, gradient clipping)."""
    from ..modules import convert

    torch.manual_seed(0)
    base = WordLM().to(device)
    fused = convert(copy.deepcopy(base))
    data = torch.randint(0, 10_000, (35, 20), device=device)
    target = torch.randint(0, 10_000, (35 * 20,), device=device)

    def step_fn(model):
        state = [tuple(torch.zeros(2, 20, 100, device=device) for _ in range(2))]

        def fn(k: int) -> None:
            model.zero_grad()
            out, hidden = model(data, tuple(t.detach() for t in state[0]))
            torch.nn.functional.cross_entropy(out.view(-1, 10_000), target).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-20)
            state[0] = hidden
        return fn

    fns = {"cudnn" if device.type == "cuda" else "torch-cpu": step_fn(base), "fusedrnn-auto": step_fn(fused)}
    timings = harness.time_group(fns, device, warmup=3, reps=reps, budget_s=budget_s)
    return [harness.make_record(env, provider=prov, variant="dropin:word-lm (pytorch/examples, convert)",
                                mode="train-step", dtype=torch.float32, B=20, T=35, I=100, H=100, timing=tm)
            for prov, tm in timings.items()]


def run_models(device: torch.device, backends: list[str], out: Optional[str], reps: int = 10,
               budget_s: Optional[float] = None, points=None) -> list[dict]:
    env = harness.environment(device)
    cuda = device.type == "cuda"
    rotate = 4 if cuda else 1
    records = []
    for task_name, model_name, bs, overrides in points or MODEL_POINTS:
        task = tasks_mod.make(task_name, seed=0)
        fns, meta = {}, None
        for be in backends:
            torch.manual_seed(0)
            model, spec = build_model(task_name, task, model_name, backend=be, **overrides)
            model.to(device)
            objective = make_objective(task, one_hot=spec.one_hot)
            batches = [to_device(task.train_batch(i, bs), device, torch.float32) for i in range(rotate)]
            fns[f"fusedrnn-{be}"] = _step_fn(model, objective, batches, device)
            if meta is None:
                base = to_torch_modules(model)
                fns["cudnn" if cuda else "torch-cpu"] = _step_fn(base, objective, batches, device)
                T = max(v.shape[1] for v in batches[0].values() if v.dim() >= 2)
                H = next(m.hidden_size for m in model.modules() if isinstance(m, (LSTM, LSTMCell)))
                meta = (T, H)
        timings = harness.time_group(fns, device, warmup=2, reps=reps, rotate=rotate, budget_s=budget_s)
        T, H = meta
        for prov, tm in timings.items():
            records.append(harness.make_record(env, provider=prov, variant=f"model:{task_name}/{model_name}",
                                               mode="train-step", dtype=torch.float32, B=bs, T=T, I=H, H=H,
                                               timing=tm))
    if points is None:
        records += dropin_word_lm(device, max(reps, 20), budget_s, env)
    if out:
        import os

        harness.append_records(records, os.path.join(out, harness.device_slug(device) + ".jsonl"))
    return records
