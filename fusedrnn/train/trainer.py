"""The training loop: periodic evaluation, metrics (CSV + JSON), samples, figures,
atomic checkpoints, exact resume, and data-parallel training under torchrun.

Exact resume: the batch of step s is a pure function of (seed, s) (see
:mod:`fusedrnn.tasks.base`); a checkpoint holds the model, the optimizer, the step, the
metrics so far, the running training-loss sum, and every rank's torch RNG state, so
``steps = a + b`` in one go and ``a`` then ``--resume`` to ``a + b`` give bitwise equal
parameters and metrics (wall-clock columns aside).  Evaluation runs under
``torch.random.fork_rng`` and draws nothing from the training generators.

Data parallel: under ``torchrun --nproc_per_node N`` (WORLD_SIZE > 1) every rank builds the
same *global* batch of ``batch_size`` rows and trains on its contiguous shard inside
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, NCCL on CUDA).  Each rank's
summed loss is divided by the global batch's normalizer and multiplied by N, so DDP's
gradient average equals the single-process gradient of the global batch.  Dropout masks
differ between ranks (the RNG is seeded with seed + rank); batch norm statistics are per rank.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from .. import report
from .. import tasks as tasks_mod
from ..tasks import shard_batch, to_device
from . import checkpoint as ckpt
from .objectives import make_objective
from .progress import Progress
from .registry import TASK_SPECS, build_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}
TIME_KEYS = ("time_s", "steps_per_s")   # wall-clock columns (not reproducible)
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Settings of one training run (None: the task's default, see registry.TASK_SPECS)."""

    task: str
    model: Optional[str] = None
    backend: str = "auto"
    steps: Optional[int] = None
    batch_size: Optional[int] = None
    device: Optional[str] = None
    dtype: str = "float32"
    out: Optional[str] = None
    resume: bool = False
    seed: int = 0
    lr: Optional[float] = None
    clip: Optional[float] = None
    eval_every: Optional[int] = None
    checkpoint_every: Optional[int] = None
    task_args: dict = field(default_factory=dict)
    model_args: dict = field(default_factory=dict)
    beam_size: int = 0
    num_samples: int = 3
    plots: bool = True
    progress: Optional[bool] = None
    threads: Optional[int] = None
    grad_dump: Optional[str] = None
    verbose: bool = True

    def resolved(self) -> "TrainConfig":
        """A copy with the task's defaults filled in."""
        if self.task not in TASK_SPECS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {sorted(TASK_SPECS)}")
        spec = TASK_SPECS[self.task]
        c = TrainConfig(**asdict(self))
        c.model = c.model or spec.default_model
        if c.model not in spec.models:
            raise ValueError(f"task {c.task!r} has no model {c.model!r}; expected one of {list(spec.models)}")
        c.steps = spec.steps if c.steps is None else c.steps
        c.batch_size = spec.batch_size if c.batch_size is None else c.batch_size
        c.lr = spec.lr if c.lr is None else c.lr
        c.clip = spec.clip if c.clip is None else c.clip
        c.eval_every = c.eval_every or spec.eval_every or max(1, c.steps // 10)
        c.checkpoint_every = c.checkpoint_every or c.eval_every
        if c.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {c.dtype!r}")
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            v = getattr(c, name)
            if not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        return c


# -- distributed ---------------------------------------------------------------------------------
def _dist_env() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _init_distributed(device: torch.device) -> bool:
    """Joins the process group (gloo on the CPU, nccl on CUDA) unless the caller has; returns
    whether this call created it (train() then destroys it before returning: a process that
    exits with a live group can abort in its teardown)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise RuntimeError("distributed training on CPU needs torch.distributed with gloo")
    dist.init_process_group(backend=backend)
    return True


def _all_gather(obj, world: int):
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _rng_state(device: torch.device) -> dict:
    s = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["cpu"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


# -- metrics files -------------------------------------------------------------------------------
def write_metrics(out: str, history: list[dict], config: dict) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in history:
        w.writerow(row)
    report.write_text(os.path.join(out, "metrics.csv"), buf.getvalue())
    report.write_json(os.path.join(out, "metrics.json"), {"config": config, "history": history})


def _fmt(row: dict) -> str:
    parts = []
    for k, v in row.items():
        if k in TIME_KEYS:
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return "  ".join(parts)


# -- the loop ------------------------------------------------------------------------------------
def train(config: TrainConfig) -> dict:
    """Run (or resume) one training run; returns {"history": [...], "final": {...}, "model": nn.Module}.

    Files in ``config.out`` (when given): checkpoint.pt, metrics.csv, metrics.json,
    samples.txt, and attention.png (seq2seq) or memory_access.png (NTM).
    """
    rank, world, local_rank = _dist_env()
    out = config.out
    saved = None
    if config.resume:
        if not out:
            raise ValueError("--resume needs --out (the directory of the run to continue)")
        path = os.path.join(out, CHECKPOINT)
        if not os.path.exists(path):
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        saved = ckpt.load(path)
        # the run's own settings, except what may change between invocations
        keep = {k: getattr(config, k) for k in ("steps", "device", "out", "progress", "threads", "verbose",
                                                 "grad_dump", "num_samples", "plots", "eval_every",
                                                 "checkpoint_every")}
        base = dict(saved["config"])
        base.update({k: v for k, v in keep.items() if v is not None})
        base["resume"], base["grad_dump"] = True, config.grad_dump
        config = TrainConfig(**base)
    cfg = config.resolved()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device:
        device = torch.device(cfg.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but no CUDA device is available")
        if world > 1:
            device = torch.device("cuda", local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    own_group = _init_distributed(device) if world > 1 else False
    dtype = DTYPES[cfg.dtype]
    main = rank == 0
    say = (lambda s: print(s, flush=True)) if (main and cfg.verbose) else (lambda s: None)

    torch.manual_seed(cfg.seed)
    task = tasks_mod.make(cfg.task, seed=cfg.seed, **cfg.task_args)
    model, mspec = build_model(cfg.task, task, cfg.model, backend=cfg.backend, **cfg.model_args)
    model.to(device=device, dtype=dtype)
    objective = make_objective(task, one_hot=mspec.one_hot,
                               **({"beam_size": cfg.beam_size} if task.kind == "seq2seq" else {}))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, history = 0, []
    loss_acc = torch.zeros((), dtype=torch.float64, device=device)
    loss_n = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, history = saved["step"], list(saved["history"])
        loss_acc = saved["loss_acc"].to(device)
        loss_n = saved["loss_n"]
        if len(saved["rng"]) != world:
            raise RuntimeError(f"--resume: the checkpoint was written by {len(saved['rng'])} processes, "
                               f"this run has {world}")
        _set_rng_state(saved["rng"][rank], device)
        say(f"resumed {out} at step {step}")
    else:
        torch.manual_seed(cfg.seed + rank)
    cfg_dict = asdict(cfg)
    train_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by the number of processes {world}")

    n_params = sum(p.numel() for p in model.parameters())
    say(f"fusedrnn train {cfg.task}: model {cfg.model} ({n_params:,} parameters), backend {cfg.backend}, "
        f"device {device}{f' x{world} processes' if world > 1 else ''}, batch {cfg.batch_size}, "
        f"steps {step}->{cfg.steps}, lr {cfg.lr}")
    eval_batches = task.eval_batches(max(cfg.batch_size, 64)) if main else []
    progress = Progress(cfg.steps, step, cfg.task, enabled=main and (
        cfg.progress if cfg.progress is not None else sys.stderr.isatty()))
    if out and main:
        os.makedirs(out, exist_ok=True)
    t_start, step0 = time.time(), step
    final: dict = history[-1] if history else {}

    while step < cfg.steps:
        model.train()
        gbatch = task.train_batch(step, cfg.batch_size)
        count = objective.count(gbatch)
        batch = to_device(shard_batch(gbatch, rank, world), device, dtype)
        loss_sum = objective.loss(train_model, batch)
        loss = loss_sum * (world / max(count, 1.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_dump and step == step0:
            if main:
                ckpt.save({n: p.grad.detach().double().cpu() for n, p in model.named_parameters()
                           if p.grad is not None}, cfg.grad_dump)
        if cfg.clip and cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        loss_acc += loss_sum.detach().double() / max(count, 1.0)
        loss_n += 1
        step += 1
        progress.update(step)

        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = loss_acc.clone()
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(acc)
            row = {"step": step, "train_loss": float(acc) / max(loss_n, 1)}
            loss_acc.zero_()
            loss_n = 0
            if main:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    row.update(objective.evaluate(model, eval_batches, device, dtype))
                    samples = objective.samples(model, eval_batches[0], device, dtype, cfg.num_samples) \
                        if cfg.num_samples else []
                    fig = None
                    if out and cfg.plots:
                        name = "attention.png" if task.kind == "seq2seq" else "memory_access.png"
                        fig = objective.plot(model, eval_batches[0], device, dtype, os.path.join(out, name))
                elapsed = time.time() - t_start
                row["time_s"] = round(elapsed, 3)
                row["steps_per_s"] = round((step - step0) / max(elapsed, 1e-9), 3)
                history.append(row)
                final = row
                progress.write(f"[{cfg.task} step {step}] {_fmt(row)}")
                progress.update(step, f"loss {row['train_loss']:.4g}")
                if out:
                    write_metrics(out, history, cfg_dict)
                    if samples:
                        with open(os.path.join(out, "samples.txt"), "a") as f:
                            f.write(f"== step {step} ==\n" + "\n".join(samples) + "\n\n")
                if samples and cfg.verbose:
                    progress.write("\n".join(samples))
                if fig and cfg.verbose:
                    progress.write(f"figure: {fig}")
        if out and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            rngs = _all_gather(_rng_state(device), world)
            if main:
                ckpt.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "history": history, "loss_acc": loss_acc.cpu(), "loss_n": loss_n, "rng": rngs,
                           "config": cfg_dict}, os.path.join(out, CHECKPOINT))
    progress.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if own_group:
            dist.destroy_process_group()
    return {"history": history, "final": final, "model": model, "config": cfg}


def reproducible(row: dict) -> dict:
    """A metrics row without its wall-clock columns."""
    return {k: v for k, v in row.items() if k not in TIME_KEYS}


def is_finite(row: dict) -> bool:
    return all(not isinstance(v, float) or math.isfinite(v) for v in row.values())


def evaluate_checkpoint(out: str, task_args: Optional[dict] = None, device: Optional[str] = None,
                        beam_size: Optional[int] = None, name: str = "eval.json", verbose: bool = True) -> dict:
    """Evaluate the checkpoint of the run in ``out`` on its task, with ``task_args`` overriding the
    run's task arguments (e.g. eval_min_len=40 for copy, eval_n_max=60 for anbn).  Writes
    ``out/<name>`` ({"step", "task_args", "metrics"}) and returns the metrics."""
    path = os.path.join(out, CHECKPOINT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    saved = ckpt.load(path)
    cfg = TrainConfig(**saved["config"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[cfg.dtype]
    targs = dict(cfg.task_args, **(task_args or {}))
    task = tasks_mod.make(cfg.task, seed=cfg.seed, **targs)
    model, mspec = build_model(cfg.task, task, cfg.model, backend=cfg.backend, **cfg.model_args)
    model.load_state_dict(saved["model"])
    model.to(device=dev, dtype=dtype)
    beam = cfg.beam_size if beam_size is None else beam_size
    objective = make_objective(task, one_hot=mspec.one_hot, **({"beam_size": beam} if task.kind == "seq2seq" else {}))
    metrics = objective.evaluate(model, task.eval_batches(max(cfg.batch_size, 64)), dev, dtype)
    report.write_json(os.path.join(out, name), {"step": saved["step"], "task_args": targs, "metrics": metrics})
    if verbose:
        print(f"[{cfg.task} checkpoint step {saved['step']}, task args {targs}] {_fmt(metrics)}", flush=True)
    return metrics
