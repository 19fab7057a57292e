"""Declarative maps between ctxjax parameters and Hugging Face tensor names, one table per family.

Each `Tensor` ties one HF tensor to one or more ctxjax parameters (GPT-2 fuses q, k and v into `c_attn`)
and knows how to convert a single layer's values both ways. Parameters under `layers` carry a leading
layer axis in ctxjax (nn.scan) and one HF tensor per layer (`{i}` in the name).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from ctxjax.config import ModelConfig
from ctxjax.hf.config import export_model_type

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Tensor:
    hf_name: str  # with "{i}" for per-layer tensors
    paths: tuple[Path, ...]  # ctxjax parameter paths (under layers: without the layer axis)
    to_hf: Callable[[ModelConfig, Sequence[np.ndarray]], np.ndarray]
    from_hf: Callable[[ModelConfig, np.ndarray], list[np.ndarray]]
    # Per-layer tensors that HF's layers below this one lack (ModernBERT's first layer has no attention norm):
    # ctxjax keeps the parameter in every layer (nn.scan), unused there, and fills it with ones on import.
    first_layer: int = 0

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def _same(cfg, xs):
    return xs[0]


def _same_back(cfg, w):
    return [w]


def _transposed(cfg, xs):  # flax [in, out] -> torch Linear [out, in]
    return xs[0].T


def _transposed_back(cfg, w):
    return [w.T]


def _flat(cfg, xs):  # [H, Dh] bias -> [H*Dh]
    return xs[0].reshape(-1)


def _heads_back(n_heads: Callable[[ModelConfig], int]):
    def back(cfg, w):
        return [w.reshape(n_heads(cfg), cfg.dim_per_head)]

    return back


def _in_proj_to_linear(cfg, xs):  # [D, H, Dh] -> torch Linear [H*Dh, D]
    return xs[0].reshape(xs[0].shape[0], -1).T


def _in_proj_back(n_heads):
    def back(cfg, w):
        return [w.T.reshape(cfg.d_model, n_heads(cfg), cfg.dim_per_head)]

    return back


def _out_proj_to_linear(cfg, xs):  # [H, Dh, D] -> torch Linear [D, H*Dh]
    return xs[0].reshape(-1, xs[0].shape[-1]).T


def _out_proj_back(cfg, w):
    return [w.T.reshape(cfg.n_heads, cfg.dim_per_head, cfg.d_model)]


def _out_proj_to_conv(cfg, xs):  # [H, Dh, D] -> Conv1D [H*Dh, D]
    return xs[0].reshape(-1, xs[0].shape[-1])


def _out_proj_from_conv(cfg, w):
    return [w.reshape(cfg.n_heads, cfg.dim_per_head, cfg.d_model)]


# Kernels [D, ...] -> Conv1D [D, sum of outputs], e.g. GPT-2's columns [q | k | v].
def _fuse_columns(cfg, xs):
    return np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=1)


def _split_qkv(cfg, w):
    return [part.reshape(cfg.d_model, cfg.n_heads, cfg.dim_per_head) for part in np.split(w, 3, axis=1)]


def _fuse_qkv_bias(cfg, xs):
    return np.concatenate([x.reshape(-1) for x in xs])


def _split_qkv_bias(cfg, w):
    return [part.reshape(cfg.n_heads, cfg.dim_per_head) for part in np.split(w, 3)]


def _fuse_rows(cfg, xs):  # kernels [D, ...] -> one torch Linear [sum of outputs, D], rows in the given order
    return _fuse_columns(cfg, xs).T


def _split_qkv_rows(cfg, w):  # Phi-3's qkv_proj [(H + 2 KV) * Dh, D], rows [q | k | v]
    q = cfg.n_heads * cfg.dim_per_head
    kv = cfg.kv_heads * cfg.dim_per_head
    parts = np.split(w.T, [q, q + kv], axis=1)
    return [p.reshape(cfg.d_model, -1, cfg.dim_per_head) for p in parts]


def _split_gate_up_rows(cfg, w):  # Phi-3's gate_up_proj [2 F, D], rows [gate | up]
    return list(np.split(w.T, 2, axis=1))


def _q_heads(cfg):
    return cfg.n_heads


def _kv_heads(cfg):
    return cfg.kv_heads


def llama_tensors(cfg: ModelConfig, model_type: str) -> list[Tensor]:
    layer = "model.layers.{i}."
    # Llama's post_attention_layernorm is the MLP's input norm; Gemma names its four norms by where they sit.
    norms = (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm"))
    if model_type in ("gemma2", "gemma3_text", "gemma3"):
        norms = (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "attn_post_norm"),
                 ("pre_feedforward_layernorm", "mlp_norm"), ("post_feedforward_layernorm", "mlp_post_norm"))
    out = [
        Tensor("model.embed_tokens.weight", (("embed", "embedding"),), _same, _same_back),
        Tensor("model.norm.weight", (("final_norm", "scale"),), _same, _same_back),
        *(Tensor(layer + f"{theirs}.weight", ((ours, "scale"),), _same, _same_back)
          for theirs, ours in norms),
        Tensor(layer + "self_attn.o_proj.weight", (("attn", "o", "kernel"),), _out_proj_to_linear,
               _out_proj_back),
    ]
    lm_head = [] if cfg.tied else [Tensor("lm_head.weight", (("lm_head", "kernel"),), _transposed,
                                          _transposed_back)]
    if model_type == "phi3":  # no biases; q, k, v fused and gate, up fused
        return out + [
            Tensor(layer + "self_attn.qkv_proj.weight", tuple(("attn", n, "kernel") for n in "qkv"),
                   _fuse_rows, _split_qkv_rows),
            Tensor(layer + "mlp.gate_up_proj.weight", (("mlp", "gate", "kernel"), ("mlp", "up", "kernel")),
                   _fuse_rows, _split_gate_up_rows),
            Tensor(layer + "mlp.down_proj.weight", (("mlp", "down", "kernel"),), _transposed,
                   _transposed_back),
        ] + lm_head
    if cfg.qk_norm:  # Qwen3, Gemma 3
        out += [Tensor(layer + f"self_attn.{n}_norm.weight", (("attn", f"{n}_norm", "scale"),), _same,
                       _same_back)
                for n in "qk"]
    for name, heads in (("q", _q_heads), ("k", _kv_heads), ("v", _kv_heads)):
        out.append(Tensor(layer + f"self_attn.{name}_proj.weight", (("attn", name, "kernel"),),
                          _in_proj_to_linear, _in_proj_back(heads)))
        if cfg.use_qkv_bias:
            out.append(Tensor(layer + f"self_attn.{name}_proj.bias", (("attn", name, "bias"),),
                              _flat, _heads_back(heads)))
    if cfg.use_o_bias:
        out.append(Tensor(layer + "self_attn.o_proj.bias", (("attn", "o", "bias"),), _same, _same_back))
    for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        out.append(Tensor(layer + f"mlp.{theirs}.weight", (("mlp", ours, "kernel"),), _transposed,
                          _transposed_back))
        if cfg.use_mlp_bias:
            out.append(Tensor(layer + f"mlp.{theirs}.bias", (("mlp", ours, "bias"),), _same, _same_back))
    return out + lm_head


def gpt2_tensors(cfg: ModelConfig) -> list[Tensor]:
    layer = "h.{i}."
    qkv = tuple(("attn", n, "kernel") for n in "qkv")
    qkv_bias = tuple(("attn", n, "bias") for n in "qkv")
    out = [
        Tensor("wte.weight", (("embed", "embedding"),), _same, _same_back),
        Tensor("wpe.weight", (("pos_embed", "embedding"),), _same, _same_back),
        Tensor("ln_f.weight", (("final_norm", "scale"),), _same, _same_back),
        Tensor("ln_f.bias", (("final_norm", "bias"),), _same, _same_back),
        Tensor(layer + "attn.c_attn.weight", qkv, _fuse_columns, _split_qkv),
        Tensor(layer + "attn.c_attn.bias", qkv_bias, _fuse_qkv_bias, _split_qkv_bias),
        Tensor(layer + "attn.c_proj.weight", (("attn", "o", "kernel"),), _out_proj_to_conv,
               _out_proj_from_conv),
        Tensor(layer + "attn.c_proj.bias", (("attn", "o", "bias"),), _same, _same_back),
        Tensor(layer + "mlp.c_fc.weight", (("mlp", "up", "kernel"),), _same, _same_back),
        Tensor(layer + "mlp.c_fc.bias", (("mlp", "up", "bias"),), _same, _same_back),
        Tensor(layer + "mlp.c_proj.weight", (("mlp", "down", "kernel"),), _same, _same_back),
        Tensor(layer + "mlp.c_proj.bias", (("mlp", "down", "bias"),), _same, _same_back),
    ]
    for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
        out.append(Tensor(layer + f"{theirs}.weight", ((ours, "scale"),), _same, _same_back))
        out.append(Tensor(layer + f"{theirs}.bias", ((ours, "bias"),), _same, _same_back))
    if not cfg.tied:
        out.append(Tensor("lm_head.weight", (("lm_head", "kernel"),), _transposed, _transposed_back))
    return out


def _linear(hf_name: str, path: Path, bias: bool) -> list[Tensor]:
    """A torch Linear (weight [out, in], optional bias) as the flax Dense at `path` (kernel [in, out])."""
    out = [Tensor(hf_name + ".weight", (path + ("kernel",),), _transposed, _transposed_back)]
    return out + ([Tensor(hf_name + ".bias", (path + ("bias",),), _same, _same_back)] if bias else [])


def _norm(hf_name: str, path: Path, bias: bool, first_layer: int = 0) -> list[Tensor]:
    out = [Tensor(hf_name + ".weight", (path + ("scale",),), _same, _same_back, first_layer)]
    return out + ([Tensor(hf_name + ".bias", (path + ("bias",),), _same, _same_back)] if bias else [])


def _decoder(cfg: ModelConfig, hf_name: str, bias_name: str) -> list[Tensor]:
    """A masked-LM head's decoder: its bias, and its weight unless tied to the word embeddings."""
    out = [Tensor(bias_name, (("output_bias",),), _same, _same_back)]
    return out if cfg.tied else out + _linear(hf_name, ("lm_head",), False)


def bert_tensors(cfg: ModelConfig, model_type: str) -> list[Tensor]:
    """BertForMaskedLM / RobertaForMaskedLM (the encoder under `bert.` / `roberta.`) or the bare BertModel /
    RobertaModel."""
    mlm = cfg.output_head == "mlm"
    base = f"{model_type}." if mlm else ""
    layer = base + "encoder.layer.{i}."
    out = [
        Tensor(base + "embeddings.word_embeddings.weight", (("embed", "embedding"),), _same, _same_back),
        Tensor(base + "embeddings.position_embeddings.weight", (("pos_embed", "embedding"),), _same,
               _same_back),
        Tensor(base + "embeddings.token_type_embeddings.weight", (("type_embed", "embedding"),), _same,
               _same_back),
        *_norm(base + "embeddings.LayerNorm", ("embed_norm",), True),
        Tensor(layer + "attention.output.dense.weight", (("attn", "o", "kernel"),), _out_proj_to_linear,
               _out_proj_back),
        Tensor(layer + "attention.output.dense.bias", (("attn", "o", "bias"),), _same, _same_back),
        *_norm(layer + "attention.output.LayerNorm", ("attn_norm",), True),
        *_linear(layer + "intermediate.dense", ("mlp", "up"), True),
        *_linear(layer + "output.dense", ("mlp", "down"), True),
        *_norm(layer + "output.LayerNorm", ("mlp_norm",), True),
    ]
    for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
        out += [Tensor(layer + f"attention.self.{theirs}.weight", (("attn", ours, "kernel"),),
                       _in_proj_to_linear, _in_proj_back(_q_heads)),
                Tensor(layer + f"attention.self.{theirs}.bias", (("attn", ours, "bias"),), _flat,
                       _heads_back(_q_heads))]
    if not mlm:
        return out
    head = "cls.predictions." if model_type == "bert" else "lm_head."
    transform, norm = ("transform.dense", "transform.LayerNorm") if model_type == "bert" else ("dense",
                                                                                                "layer_norm")
    # The decoder's bias is the head's `bias` while tied; untied, the decoder's own (and `bias` is unused).
    bias = head + "bias" if cfg.tied else head + "decoder.bias"
    return (out + _linear(head + transform, ("mlm_head", "dense"), True)
            + _norm(head + norm, ("mlm_head", "norm"), True) + _decoder(cfg, head + "decoder", bias))


def modernbert_tensors(cfg: ModelConfig) -> list[Tensor]:
    """ModernBertForMaskedLM (the encoder under `model.`) or the bare ModernBertModel."""
    mlm = cfg.output_head == "mlm"
    base = "model." if mlm else ""
    layer = base + "layers.{i}."
    out = [
        Tensor(base + "embeddings.tok_embeddings.weight", (("embed", "embedding"),), _same, _same_back),
        *_norm(base + "embeddings.norm", ("embed_norm",), False),
        *_norm(base + "final_norm", ("final_norm",), False),
        *_norm(layer + "attn_norm", ("attn_norm",), False, first_layer=1),
        *_norm(layer + "mlp_norm", ("mlp_norm",), False),
        Tensor(layer + "attn.Wqkv.weight", tuple(("attn", n, "kernel") for n in "qkv"), _fuse_rows,
               _split_qkv_rows),
        Tensor(layer + "attn.Wo.weight", (("attn", "o", "kernel"),), _out_proj_to_linear, _out_proj_back),
        # Wi's rows are [input | gate], the output act(input) * gate: ours gate (activated) and up.
        Tensor(layer + "mlp.Wi.weight", (("mlp", "gate", "kernel"), ("mlp", "up", "kernel")), _fuse_rows,
               _split_gate_up_rows),
        *_linear(layer + "mlp.Wo", ("mlp", "down"), False),
    ]
    if not mlm:
        return out
    return (out + _linear("head.dense", ("mlm_head", "dense"), False)
            + _norm("head.norm", ("mlm_head", "norm"), False) + _decoder(cfg, "decoder", "decoder.bias"))


def tensors_for(cfg: ModelConfig, model_type: str | None = None) -> list[Tensor]:
    """The tensors of a checkpoint of `model_type` (a value of hf.config.SUPPORTED; default: what an export of
    `cfg` writes)."""
    if cfg.family == "gpt2":
        return gpt2_tensors(cfg)
    if cfg.family == "bert":
        return bert_tensors(cfg, model_type or export_model_type(cfg))
    if cfg.family == "modernbert":
        return modernbert_tensors(cfg)
    return llama_tensors(cfg, model_type or export_model_type(cfg))


# HF names that are buffers or duplicates, never weights: causal-mask buffers of GPT-2, rotary caches.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
# The image half of a multimodal Gemma 3 checkpoint: ctxjax reads its language model only.
IGNORED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                    "model.multi_modal_projector.")
# Where a multimodal Gemma 3 checkpoint keeps its language model (files on the hub; transformers' own layout).
LANGUAGE_MODEL_PREFIXES = {"language_model.model.": "model.", "model.language_model.": "model.",
                           "language_model.lm_head.": "lm_head."}


# Parts of BERT-style checkpoints outside what ctxjax reads: the pooler and next-sentence head (BertModel,
# BertForPreTraining) and the position-id buffer.
ENCODER_IGNORED = ("pooler.", "cls.seq_relationship.", "embeddings.position_ids")
# A tied masked-LM checkpoint may still store its decoder weight and bias (copies of the word embeddings and
# of the head's `bias`); an untied one, the head's `bias`, which its decoder never reads.
TIED_DECODERS = ("cls.predictions.decoder.weight", "lm_head.decoder.weight", "decoder.weight",
                 "cls.predictions.decoder.bias", "lm_head.decoder.bias")
UNTIED_DEAD_BIASES = ("cls.predictions.bias", "lm_head.bias")


def canonical_name(cfg: ModelConfig, name: str) -> str:
    """GPT-2 files store the base model with or without the `transformer.` prefix, multimodal Gemma 3 files
    their language model under `language_model.`; accept them as the text model's names."""
    if cfg.family == "gpt2" and name.startswith("transformer."):
        return name[len("transformer."):]
    for prefix, plain in LANGUAGE_MODEL_PREFIXES.items():
        if cfg.family == "gemma" and name.startswith(prefix):
            return plain + name[len(prefix):]
    return name


def is_ignored(cfg: ModelConfig, name: str) -> bool:
    if name.endswith(IGNORED_SUFFIXES) and not name.endswith("c_attn.bias"):
        return True
    if cfg.family == "gemma" and name.startswith(IGNORED_PREFIXES):
        return True
    if cfg.family in ("bert", "modernbert"):
        return (any(part in name for part in ENCODER_IGNORED)
                or name in (TIED_DECODERS if cfg.tied else UNTIED_DEAD_BIASES))
    # A tied checkpoint may still store lm_head.weight (a copy of the embeddings).
    return cfg.tied and name == "lm_head.weight"
