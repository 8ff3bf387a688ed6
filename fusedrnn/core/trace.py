"""Marks for torch.compile that cost nothing at import.

Dimension letters: none (function markers only).
"""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def trace_constant(fn: F) -> F:
    """``torch.compiler.assume_constant_result`` without importing Dynamo.

    Dynamo calls a function so marked at trace time and bakes its result into the graph. The
    public decorator imports ``torch._dynamo`` (1.3 s of ``import fusedrnn`` on a 2-core
    machine) only to set this attribute; torch.compile imports Dynamo when it first traces,
    and reads the attribute then. tests/test_compile.py checks that the public decorator
    still sets exactly this.
    """
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


__all__ = ["trace_constant"]
