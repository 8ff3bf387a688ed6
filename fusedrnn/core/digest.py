"""The fingerprint of a set of source files: what a GPU validation of a backend vouches for
(:meth:`fusedrnn.core.contract.Backend.fingerprint`).  Plain Python (hashlib, os): setup.py
loads this file by path to fingerprint the CUDA sources it compiles.
"""

from __future__ import annotations

import hashlib
import os


def digest_tree(root: str, suffixes: tuple, extra: str = "") -> str:
    """sha256 (first 16 hex digits) of every file under ``root`` whose name ends with one of
    ``suffixes`` (relative path and bytes, in sorted order), then ``extra`` (e.g. the compiler
    release)."""
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(suffixes):
                path = os.path.join(dirpath, f)
                h.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
                with open(path, "rb") as fh:
                    h.update(fh.read())
                h.update(b"\0")
    h.update(extra.encode())
    return h.hexdigest()[:16]


__all__ = ["digest_tree"]
