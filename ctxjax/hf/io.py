"""Safetensors files on disk: read single or sharded checkpoints lazily, write shards plus an index.

Numpy only (safetensors' numpy API with ml_dtypes for bfloat16), so no torch is needed to convert.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterator, Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from ctxjax.errors import InputError, read_json
from ctxjax.fs import is_within, write_directory_atomically

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 2**30  # HF's default shard size
# Written last into every directory ctxjax exports: which files it wrote (names and sizes) and from what. Only
# a directory whose files still match it may be replaced (`overwrite`): nothing a user made is ever deleted.
EXPORT_MARKER = "ctxjax_export.json"


class CheckpointReader:
    """Tensor name -> numpy array, opening each shard file once and reading tensors on demand."""

    def __init__(self, hf_dir: str):
        index_path, single_path = os.path.join(hf_dir, INDEX), os.path.join(hf_dir, SINGLE)
        if os.path.exists(index_path):
            weight_map = read_json(index_path, "the index of a sharded safetensors checkpoint")
            if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
                raise InputError(f"{index_path} has no \"weight_map\" object; is it a safetensors index?")
            self._file_of = {name: os.path.join(hf_dir, file)
                             for name, file in weight_map["weight_map"].items()}
        elif os.path.exists(single_path):
            self._file_of = {name: single_path for name in self._open(single_path).keys()}
        else:
            found = sorted(os.listdir(hf_dir))
            hint = " (PyTorch .bin checkpoints: re-save them with safe_serialization=True)" if any(
                n.endswith(".bin") for n in found) else ""
            raise InputError(f"no {SINGLE} or {INDEX} in {hf_dir}{hint}")
        self._handles: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self._file_of)

    def __getitem__(self, name: str) -> np.ndarray:
        path = self._file_of[name]
        if path not in self._handles:
            if not os.path.exists(path):
                raise InputError(f"shard {os.path.basename(path)} named by {INDEX} is missing from the "
                                 "checkpoint")
            self._handles[path] = self._open(path)
        try:
            return self._handles[path].get_tensor(name)
        except Exception as e:  # safetensors' own error type: a file cut short or overwritten
            raise InputError(f"cannot read {name} from {path} ({e}); the file is damaged: copy it "
                             "again") from None

    def _open(self, path: str):
        try:
            return safe_open(path, framework="numpy")
        except Exception as e:  # safetensors' own error type: a truncated header, not a safetensors file
            raise InputError(f"{path} is not a readable safetensors file ({e}); the file is damaged or "
                             "incomplete: copy it again") from None


def write_checkpoint(tensors: Iterator[tuple[str, np.ndarray]], out_dir: str,
                     max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Write (name, array) pairs as one model.safetensors, or as shards plus an index past max_shard_bytes."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors:
        array = np.ascontiguousarray(array)
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, SINGLE), metadata=metadata)
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out_dir, file), metadata=metadata)
        for name, array in shard.items():
            weight_map[name] = file
            total += array.nbytes
    with open(os.path.join(out_dir, INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_directory(out_dir: str, overwrite: bool, fill: Callable[[str], None], *,
                    protected: Sequence[str] = (), source: str = "") -> str:
    """Create `out_dir` by `fill(tmp)` on a temporary sibling directory renamed into place at the end, so a
    failure leaves no half-written directory; see `check_output_dir` for what may be replaced. A marker file
    (EXPORT_MARKER) records what was written, so that a later `overwrite` can prove the directory is
    ctxjax's."""
    out_dir = os.path.abspath(out_dir)
    check_output_dir(out_dir, overwrite, protected)

    def fill_and_mark(directory: str) -> None:
        fill(directory)
        marker = {"written_by": "ctxjax", "source": source, "files": _listing(directory)}
        with open(os.path.join(directory, EXPORT_MARKER), "w") as f:
            json.dump(marker, f, indent=2)

    return write_directory_atomically(out_dir, fill_and_mark)


def check_output_dir(out_dir: str, overwrite: bool, protected: Sequence[str] = (), *,
                     not_empty: str = "pass --overwrite (overwrite=True) to replace an earlier ctxjax "
                                      "export, or choose a new directory") -> None:
    """Refuse (one line) to write `out_dir` when it is, holds or lies inside a `protected` path (a work
    directory's checkpoints and tokenizer, the model it came from), when it is a file, or when it is not
    empty — unless `overwrite` and it is an export ctxjax wrote that nobody changed since. Nothing else is
    ever replaced, with `overwrite` or without. `not_empty`: the advice when it is not empty and `overwrite`
    is off."""
    for path in map(os.path.abspath, protected):
        if os.path.realpath(out_dir) == os.path.realpath(path):
            raise InputError(f"the output directory {out_dir} is a work directory's checkpoints, logs or "
                             "tokenizer, or the model exported from: an export never replaces it; choose a "
                             "new directory")
        if is_within(path, out_dir):
            raise InputError(f"the output directory {out_dir} holds {path}, which an export must never "
                             "replace; choose a new directory")
        if is_within(out_dir, path):
            raise InputError(f"the output directory {out_dir} is inside {path}, where an export must never "
                             "write; choose a new directory outside it")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir} exists and is not a directory; choose another output path")
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    if not overwrite:
        raise InputError(f"{out_dir} is not empty; {not_empty}")
    changed = export_changes(out_dir)
    if changed:
        raise InputError(f"{out_dir} is not an unchanged ctxjax export ({changed}), and ctxjax replaces "
                         "nothing else; choose a new directory, or move its files away yourself")


def export_source(out_dir: str) -> str | None:
    """The `source` a ctxjax export in `out_dir` records (None: no readable marker; changed or not)."""
    try:
        with open(os.path.join(out_dir, EXPORT_MARKER)) as f:
            return str(json.load(f).get("source", ""))
    except (OSError, ValueError, AttributeError):
        return None


def export_changes(out_dir: str) -> str:
    """'' when `out_dir` holds exactly the files a ctxjax export wrote there (same names and sizes), else why
    not."""
    try:
        with open(os.path.join(out_dir, EXPORT_MARKER)) as f:
            written = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {EXPORT_MARKER}"
    now = _listing(out_dir)
    now.pop(EXPORT_MARKER, None)
    added = sorted(set(now) - set(written))
    differ = sorted(n for n in set(now) & set(written) if now[n] != written[n])
    removed = sorted(set(written) - set(now))
    for what, names in (("added since", added), ("changed since", differ), ("removed since", removed)):
        if names:
            return f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''} {what} it was written"
    return ""


def _listing(directory: str) -> dict[str, int]:
    """Relative path -> size of every file under `directory`."""
    sizes = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            sizes[os.path.relpath(path, directory)] = os.path.getsize(path)
    return sizes
