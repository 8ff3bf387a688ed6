"""The benchmark suite (``python -m fusedrnn bench``): harness, providers, presets, table."""

from .suite import PRESETS, markdown_table, print_table, run, summarize

__all__ = ["PRESETS", "markdown_table", "print_table", "run", "summarize"]
