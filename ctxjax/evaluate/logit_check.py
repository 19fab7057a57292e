"""Do ctxjax and `transformers` give the same answers for a checkpoint? A logit checker, as MaxText keeps one.

`compare_logits(cfg, params, hf_dir, rows)` runs each token row through the ctxjax model (cfg, params) and
through `transformers.AutoModelForCausalLM.from_pretrained(hf_dir)` in PyTorch, both in float32, and reports
per row how far the next-token distributions are apart. Two uses: a Hugging Face model imported into ctxjax
(is the import exact for *this* checkpoint, not only for the tiny random models of the tests?) and a trained
run against its export (will the PyTorch deployment compute what was trained?). Rows longer than the original
context check the RoPE scaling where the implementations are most likely to part (YaRN, LongRoPE, dynamic
NTK). An encoder is compared through its masked-LM logits (`AutoModelForMaskedLM`), or, a bare one (head
'none'), through its last hidden state (`AutoModel`).

PyTorch and transformers are imported only here (when a check runs), so the rest of ctxjax needs neither.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ctxjax.config import ModelConfig
from ctxjax.errors import InputError
from ctxjax.execution import ExecutionConfig
from ctxjax.hf import read_hf_config
from ctxjax.hf.encoder_config import ENCODER_ARCHITECTURES
from ctxjax.model import Transformer

# ctxjax's logits are made and compared this many positions at a time: [L, V] float32 at 128k tokens and a
# 128k vocabulary would be 64 GB, while PyTorch's forward has to hold its own [L, V] anyway.
CHUNK = 1024


def require_torch():
    try:
        import torch
        import transformers
    except ImportError:
        raise InputError("checking logits runs the model in PyTorch: pip install torch transformers "
                         "(torch==2.13.0 is the CPU wheel)") from None
    return torch, transformers


def check_hf_directory(hf_dir: str) -> None:
    """A one-line error unless `hf_dir` is a local directory that is not a ctxjax work directory."""
    if not os.path.isdir(hf_dir):  # and never a hub name: nothing is downloaded
        raise InputError(f"{hf_dir} is not a directory; pass a Hugging Face model directory (config.json + "
                         "weights)")
    if (not os.path.isfile(os.path.join(hf_dir, "config.json"))
            and os.path.isdir(os.path.join(hf_dir, "checkpoints"))):
        raise InputError(f"{hf_dir} is a ctxjax work directory, not a Hugging Face one; compare it with its "
                         f"export: check-logits {os.path.join(hf_dir, 'hf')} --workdir {hf_dir} "
                         "(or `ctxjax export` first)")


def load_reference(hf_dir: str, expected_vocab_size: int | None = None):
    """The PyTorch model of `hf_dir` in float32, in eval mode; with `expected_vocab_size`, refused unless its
    vocabulary has that size (a run compared with another model's export would fail later, less clearly)."""
    check_hf_directory(hf_dir)
    torch, transformers = require_torch()
    transformers.utils.logging.disable_progress_bar()
    config = read_hf_config(hf_dir)
    architecture = next(iter(config.get("architectures") or []), "")
    auto, extra = transformers.AutoModelForCausalLM, {}
    if architecture in ENCODER_ARCHITECTURES:
        auto = (transformers.AutoModelForMaskedLM if architecture.endswith("ForMaskedLM")
                else transformers.AutoModel)
        if architecture in ("BertModel", "RobertaModel"):
            extra = dict(add_pooling_layer=False)  # not part of the compared output, nor of ctxjax's model
    try:
        # Never the directory's own code (auto_map): transformers would otherwise ask on stdin, and run it on
        # "y".
        model = auto.from_pretrained(hf_dir, dtype=torch.float32, trust_remote_code=False, **extra)
    except Exception as error:  # noqa: BLE001 - any failure to load is the user's to fix, in one line
        detail = (str(error).splitlines() or [type(error).__name__])[0]
        raise InputError(f"transformers cannot load {hf_dir} ({type(error).__name__}: {detail}); "
                         "pass a directory written by `ctxjax export` or a Hugging Face model "
                         "directory") from None
    vocab = model.get_input_embeddings().weight.shape[0]
    if expected_vocab_size is not None and vocab != expected_vocab_size:
        raise InputError(f"{hf_dir} holds a model of {vocab} token ids and the ctxjax model has "
                         f"{expected_vocab_size}: compare a checkpoint with its own export (check-logits "
                         "W/hf --workdir W)")
    return model.eval()


def reference_logits(model, row: np.ndarray) -> np.ndarray:
    """[L, V] float32 logits of one token row under the PyTorch model ([L, D] last hidden state of a bare
    encoder)."""
    torch, _ = require_torch()
    kwargs = {}
    if model.config.model_type == "roberta":
        # RoBERTa numbers positions from padding_idx + 1, except that it gives every token equal to its pad id
        # the padding row: the row holds no padding, and ctxjax numbers all its tokens.
        offset = model.config.pad_token_id + 1
        kwargs["position_ids"] = torch.arange(offset, offset + len(row))[None]
    with torch.no_grad():
        out = model(torch.as_tensor(row[None].astype(np.int64)), **kwargs)
    return (out.logits if "logits" in out else out.last_hidden_state)[0].float().numpy()


# In float32 as the reference runs; "auto" picks a linear-memory kernel for long rows.
FLOAT32 = ExecutionConfig(attention="auto", dtype="float32")


@functools.partial(jax.jit, static_argnames=("cfg",))
def _hidden(cfg: ModelConfig, params, tokens):
    return Transformer(cfg, FLOAT32).apply({"params": params}, tokens, return_hidden=True)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits(cfg: ModelConfig, params, hidden):
    return Transformer(cfg, FLOAT32).apply({"params": params}, hidden, method=Transformer.logits_from_hidden)


def as_float32(cfg: ModelConfig, params):
    """The model holding its weights in float32, as the reference does."""
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
    return cfg.replace(param_dtype="float32"), params


def row_differences(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Statistics of two [n, V] logit blocks of the same positions: max and summed |difference| (and the
    row of the max), summed and max KL(reference || ctxjax) in nats, and how many argmaxes agree."""
    diff = np.abs(ours.astype(np.float64) - theirs)
    log_p = theirs - _logsumexp(theirs)
    log_q = ours - _logsumexp(ours)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    per_row = diff.max(-1)
    return dict(max_abs=float(per_row.max()), argmax_row=int(per_row.argmax()), sum_abs=float(diff.sum()),
                sum_kl=float(kl.sum()), max_kl=float(kl.max()),
                top1=int(np.sum(ours.argmax(-1) == theirs.argmax(-1))), count=int(diff.size),
                rows=int(diff.shape[0]))


def _logsumexp(x):
    x = x.astype(np.float64)
    top = x.max(-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(-1, keepdims=True))


def _nan_high(x: float) -> float:
    """For picking the worst value: NaN counts as the largest (Python's max would skip past it)."""
    return float("inf") if np.isnan(x) else x


def _merge(stats: Sequence[dict], offsets: Sequence[int]) -> dict:
    worst = max(range(len(stats)), key=lambda i: _nan_high(stats[i]["max_abs"]))
    rows = sum(s["rows"] for s in stats)
    return dict(
        max_abs=stats[worst]["max_abs"],
        position=offsets[worst] + stats[worst]["argmax_row"],
        mean_abs=sum(s["sum_abs"] for s in stats) / sum(s["count"] for s in stats),
        # >= 0 but for rounding (also NaN stays NaN)
        mean_kl=max(0.0, sum(s["sum_kl"] for s in stats) / rows),
        max_kl=max((s["max_kl"] for s in stats), key=_nan_high),
        top1_agreement=sum(s["top1"] for s in stats) / rows,
    )


def compare_logits(cfg: ModelConfig, params, reference, rows: Sequence[np.ndarray]) -> list[dict]:
    """For each 1-D token row: {length, max_abs, position (of max_abs), mean_abs, mean_kl, max_kl,
    top1_agreement} between ctxjax (`cfg`, `params`, in float32) and transformers' model `reference` (a
    Hugging Face directory, or the PyTorch model `load_reference` gave). A bare encoder's last hidden states
    have no distribution: mean_kl, max_kl and top1_agreement are None."""
    reference = load_reference(reference, cfg.vocab_size) if isinstance(reference, str) else reference
    cfg, params = as_float32(cfg, params)
    params = jax.device_put(params)
    results = []
    for row in rows:
        row = np.asarray(row, np.int32)
        if row.ndim != 1 or not len(row):
            raise InputError(f"token rows must be non-empty 1-D arrays; got shape {row.shape}")
        if row.min() < 0 or row.max() >= cfg.vocab_size:
            raise InputError(f"token ids must lie in [0, {cfg.vocab_size}); got {row.min()}..{row.max()}")
        theirs = reference_logits(reference, row)
        hidden = _hidden(cfg, params, jnp.asarray(row[None]))
        stats, offsets = [], []
        for start in range(0, len(row), CHUNK):
            block = hidden[:, start:start + CHUNK]
            ours = np.asarray(block if cfg.output_head == "none" else _logits(cfg, params, block))[0]
            stats.append(row_differences(ours, theirs[start:start + CHUNK]))
            offsets.append(start)
        result = dict(length=len(row), **_merge(stats, offsets))
        if cfg.output_head == "none":
            result.update(mean_kl=None, max_kl=None, top1_agreement=None)
        results.append(result)
    return results
