"""A dependency-free one-line progress bar on stderr."""

from __future__ import annotations

import sys
import time


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, total: int, start: int = 0, label: str = "", enabled: bool = True, stream=None):
        self.total, self.n, self.label, self.enabled = total, start, label, enabled
        self.stream = stream or sys.stderr
        self.t0, self.n0, self.last = time.time(), start, 0.0
        self.info = ""

    def update(self, n: int, info: str = "") -> None:
        self.n = n
        if info:
            self.info = info
        if not self.enabled:
            return
        now = time.time()
        if now - self.last < 0.2 and n < self.total:
            return
        self.last = now
        rate = (n - self.n0) / max(now - self.t0, 1e-9)
        eta = (self.total - n) / rate if rate > 0 else 0
        width = 24
        fill = int(width * n / max(self.total, 1))
        self.stream.write(f"\r{self.label} {n}/{self.total} [{'#' * fill}{'.' * (width - fill)}] "
                          f"{rate:.1f} it/s eta {_fmt_time(eta)} {self.info}\033[K")
        self.stream.flush()

    def write(self, line: str) -> None:
        """Print a line above the bar (to stdout)."""
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
        print(line, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.update(self.n)
            self.stream.write("\n")
            self.stream.flush()
