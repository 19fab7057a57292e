"""Safetensors files on disk: read single or sharded checkpoints lazily, write shards plus an index.

Numpy only (safetensors' numpy API with ml_dtypes for bfloat16), so no torch is needed to convert.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable, Iterator

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 2**30  # HF's default shard size


class CheckpointReader:
    """Tensor name -> numpy array, opening each shard file once and reading tensors on demand."""

    def __init__(self, hf_dir: str):
        index_path, single_path = os.path.join(hf_dir, INDEX), os.path.join(hf_dir, SINGLE)
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            self._file_of = {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
        elif os.path.exists(single_path):
            with safe_open(single_path, framework="numpy") as f:
                self._file_of = {name: single_path for name in f.keys()}
        else:
            found = sorted(os.listdir(hf_dir))
            hint = " (PyTorch .bin checkpoints: re-save them with safe_serialization=True)" if any(
                n.endswith(".bin") for n in found) else ""
            raise ValueError(f"no {SINGLE} or {INDEX} in {hf_dir}{hint}")
        self._handles: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self._file_of)

    def __getitem__(self, name: str) -> np.ndarray:
        path = self._file_of[name]
        if path not in self._handles:
            if not os.path.exists(path):
                raise ValueError(f"shard {os.path.basename(path)} named by {INDEX} is missing from the checkpoint")
            self._handles[path] = safe_open(path, framework="numpy")
        return self._handles[path].get_tensor(name)


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


def write_directory(out_dir: str, overwrite: bool, fill: Callable[[str], None]) -> str:
    """Create `out_dir` by `fill(tmp)` on a temporary sibling directory that is renamed into place at the end,
    so a failure leaves no half-written directory; a non-empty `out_dir` is replaced only with `overwrite`."""
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ValueError(f"{out_dir} is not empty; pass overwrite=True (CLI: --overwrite) or choose a new directory")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} exists and is not a directory; choose another output path")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        fill(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: str, target: str) -> None:
    if not os.path.exists(target):
        os.rename(new, target)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target))
    os.rename(target, os.path.join(old, "previous"))
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
