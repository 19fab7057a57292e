"""The embedded default corpus: the running Python's standard library sources.

Long, real documents with far-reaching dependencies (an import at the top used hundreds of lines below, a
class used far from its definition), and nothing to download. Test suites are left out (repetitive, and
not what a user's model should learn), and so are installed third-party packages.

The held-out split is by file and fixed: a file is in "eval" when a hash of its path relative to the
stdlib root falls in 1/EVAL_MODULUS of the hash space, so the split is the same on every machine that has
the same Python version, and does not depend on which other files exist.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig

from ctxjax.data.config import DataError

SPLITS = ("train", "eval", "all")
EVAL_MODULUS = 20  # about 5% of the files are held out
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _is_test_or_vendored(relpath: str) -> bool:
    parts = relpath.split(os.sep)[:-1]
    return any(p in _EXCLUDED_DIRS or p.endswith(("_test", "_tests")) for p in parts)


def is_held_out(relpath: str) -> bool:
    digest = hashlib.sha1(relpath.replace(os.sep, "/").encode()).digest()
    return int.from_bytes(digest[:8], "big") % EVAL_MODULUS == 0


def stdlib_files(split: str = "train", root: str | None = None) -> list[str]:
    """Sorted absolute paths of the stdlib's *.py files in `split` ("train", "eval" or "all")."""
    if split not in SPLITS:
        raise DataError(f"stdlib split {split!r} is unknown; use one of {SPLITS} (e.g. source='stdlib:eval')")
    root = root or stdlib_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        # Prune excluded directories here so os.walk never descends into site-packages.
        dirnames[:] = sorted(d for d in dirnames if not _is_test_or_vendored(os.path.join(rel_dir, d, "x")))
        for name in filenames:
            if not name.endswith(".py"):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if split == "all" or (split == "eval") == is_held_out(rel):
                found.append(os.path.join(root, rel))
    return sorted(found)
