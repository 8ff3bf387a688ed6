"""Training: wires :mod:`fusedrnn.tasks` to default :mod:`fusedrnn.models` and runs them.

    from fusedrnn.train import TrainConfig, train
    result = train(TrainConfig("copy", steps=500, out="runs/copy", task_args={"max_len": 5}))
    result["final"]         # the last evaluation row: {"step": 500, "bit_errors": ..., ...}

Command line: ``python -m fusedrnn train TASK [--model ...] [--backend ...] [--steps N]
[--batch-size N] [--device ...] [--out DIR] [--resume]`` (``--help`` lists every option,
the models of each task, and the commands of the learning-target experiments).
Runs under ``torchrun --nproc_per_node N`` with DistributedDataParallel.
``evaluate_checkpoint(out, task_args)`` (``--eval-only``) scores a run's checkpoint on other
settings of its task, e.g. copy at length 40 or a^n b^n up to n = 60.
"""

from .objectives import OBJECTIVES, Objective, make_objective
from .registry import TASK_SPECS, ModelSpec, TaskSpec, build_model, model_names
from .trainer import CHECKPOINT, TrainConfig, evaluate_checkpoint, reproducible, train

__all__ = ["TrainConfig", "train", "evaluate_checkpoint", "reproducible", "CHECKPOINT", "TASK_SPECS", "TaskSpec", "ModelSpec",
           "build_model", "model_names", "Objective", "OBJECTIVES", "make_objective"]
