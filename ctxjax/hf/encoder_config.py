"""Hugging Face `config.json` <-> ModelConfig for the encoders: BERT and RoBERTa (family "bert") and
ModernBERT, each as its masked-LM class (head "mlm") or its bare model (head "none", whose output is the last
hidden state; BERT's and RoBERTa's pooler is not part of it)."""

from __future__ import annotations

from typing import Any

from ctxjax import positions
from ctxjax.config import ModelConfig
from ctxjax.errors import InputError

ENCODER_ARCHITECTURES = {
    "BertForMaskedLM": "bert", "BertModel": "bert",
    "RobertaForMaskedLM": "roberta", "RobertaModel": "roberta",
    "ModernBertForMaskedLM": "modernbert", "ModernBertModel": "modernbert",
}
FULL, SLIDING = "full_attention", "sliding_attention"


def head_of(architecture: str) -> str:
    return "mlm" if architecture.endswith("ForMaskedLM") else "none"


def encoder_fields(hf: dict[str, Any], architecture: str) -> dict[str, Any]:
    model_type = ENCODER_ARCHITECTURES[architecture]
    fields = _modernbert_fields(hf) if model_type == "modernbert" else _bert_fields(hf, model_type)
    return dict(fields, causal=False, head=head_of(architecture),
                vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
                n_layers=int(hf["num_hidden_layers"]), n_heads=int(hf["num_attention_heads"]),
                d_ff=int(hf["intermediate_size"]),
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def _require(hf: dict[str, Any], key: str, wanted, default, what: str) -> None:
    if hf.get(key, default) != wanted:
        raise InputError(f"{key}={hf.get(key)!r} is not supported; ctxjax implements {what}")


def _bert_fields(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
    _require(hf, "hidden_act", "gelu", "gelu", "BERT's exact GELU ('gelu')")
    _require(hf, "position_embedding_type", "absolute", "absolute", "absolute learned positions")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise InputError("is_decoder / add_cross_attention make a BERT decoder; ctxjax reads BERT encoders")
    # RoBERTa counts positions from padding_idx + 1: position p is row p + offset of its table.
    offset = int(hf.get("pad_token_id", 1)) + 1 if model_type == "roberta" else 0
    rows = int(hf.get("max_position_embeddings", 512))
    if rows <= offset:
        raise InputError(f"max_position_embeddings={rows} leaves no position after RoBERTa's offset of "
                         f"{offset} (pad_token_id + 1); the table needs more rows than its offset")
    return dict(family="bert", max_seq_len=rows - offset, position=positions.Learned(offset=offset),
                norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                type_vocab_size=int(hf.get("type_vocab_size", 2)))


def _modernbert_fields(hf: dict[str, Any]) -> dict[str, Any]:
    _require(hf, "hidden_activation", "gelu", "gelu", "ModernBERT's exact-GELU GeGLU ('gelu')")
    _require(hf, "classifier_activation", "gelu", "gelu", "ModernBERT's exact-GELU head ('gelu')")
    for key, default in (("norm_bias", False), ("attention_bias", False), ("mlp_bias", False),
                         ("classifier_bias", False), ("decoder_bias", True)):
        _require(hf, key, default, default, f"ModernBERT's default {key}={default}")
    n_layers = int(hf["num_hidden_layers"])
    every = int(hf.get("global_attn_every_n_layers", 3))
    types = hf.get("layer_types") or [FULL if i % every == 0 else SLIDING for i in range(n_layers)]
    if len(types) != n_layers or set(types) - {FULL, SLIDING}:
        raise InputError(f"layer_types must name {n_layers} layers, each {FULL!r} or {SLIDING!r}; got "
                         f"{types}")
    full = tuple(i for i, t in enumerate(types) if t == FULL)
    max_pos = int(hf.get("max_position_embeddings", 8192))
    full_rope, local_rope = (positions.Rope.from_hf({"max_position_embeddings": max_pos,
                                                     "rope_parameters": p})
                             for p in _rope_parameters(hf))
    # HF's local layers see |i - j| <= local_attention // 2; ours see |i - j| < sliding_window.
    window = int(hf.get("local_attention", 128)) // 2 + 1
    if len(full) == n_layers:
        rotation = dict(position=full_rope, sliding_window=0)
    elif not full:
        rotation = dict(position=local_rope, sliding_window=window)
    else:
        rotation = dict(position=full_rope, local_position=local_rope, sliding_window=window,
                        full_attention_layers=full)
    return dict(family="modernbert", max_seq_len=max_pos, norm_eps=float(hf.get("norm_eps", 1e-5)),
                **rotation)


def _rope_parameters(hf: dict[str, Any]) -> tuple[dict, dict]:
    """(global, local) RoPE settings as ModernBertConfig reads them: `rope_parameters` per kind of layer, a
    legacy `rope_scaling` on both, bases from global_rope_theta (160k) and local_rope_theta (10k)."""
    per_type = hf.get("rope_parameters") or {}
    full = dict(per_type.get(FULL) or {"rope_type": "default"})
    local = dict(per_type.get(SLIDING) or {"rope_type": "default"})
    full.update(hf.get("rope_scaling") or {})
    local.update(hf.get("rope_scaling") or {})
    full.setdefault("rope_theta", hf.get("global_rope_theta", 160_000.0))
    local.setdefault("rope_theta", hf.get("local_rope_theta", 10_000.0))
    return full, local


def _unfit(cfg: ModelConfig) -> str:
    """Why no Hugging Face encoder class computes this encoder ("" if one does)."""
    if cfg.family not in cfg.position.hf_families:
        return f"{'learned' if cfg.family == 'bert' else 'rope'} positions"
    if cfg.output_head == "lm":
        return "an encoder ends in a masked-LM head (head='mlm') or none (head='none')"
    if cfg.kv_heads != cfg.n_heads or cfg.dim_per_head * cfg.n_heads != cfg.d_model:
        return "no grouped-query attention, head_dim = d_model / n_heads"
    if cfg.query_pre_attn_scalar not in (None, cfg.dim_per_head):
        return "scores scaled by 1/sqrt(head_dim) only"
    if cfg.attn_logit_softcapping or cfg.final_logit_softcapping:
        return "no soft caps"
    biases = {cfg.use_qkv_bias, cfg.use_o_bias, cfg.use_mlp_bias}
    if cfg.family == "bert":
        if cfg.sliding_window or cfg.full_attention_layers:
            return "BERT attends to the whole context in every layer"
        if not cfg.type_vocab_size:
            return "BERT adds token-type embeddings: type_vocab_size >= 1"
        return "" if biases == {True} else "BERT has biases everywhere"
    if cfg.type_vocab_size:
        return "ModernBERT has no token-type embeddings"
    if biases != {False}:
        return "ModernBERT has no biases"
    for scheme in (cfg.position, cfg.local_position or cfg.position):
        if scheme.name != "rope" or scheme.partial_rotary_factor != 1.0:
            return "RoPE on whole heads only"
    if (cfg.full_attention_layers or cfg.local_position) and not cfg.sliding_window:
        return "local layers need a sliding window"
    return ""


def export_encoder_type(cfg: ModelConfig) -> str:
    """The Hugging Face model_type of an encoder's export: bert, roberta (positions at an offset) or
    modernbert; a one-line error when none computes it."""
    reason = _unfit(cfg)
    if reason:
        raise InputError(f"no Hugging Face {cfg.family} class computes this model ({reason}); change the "
                         "model to fit")
    if cfg.family == "modernbert":
        return "modernbert"
    return "roberta" if cfg.position.offset else "bert"


def encoder_config(cfg: ModelConfig) -> dict[str, Any]:
    model_type = export_encoder_type(cfg)
    suffix = "ForMaskedLM" if cfg.output_head == "mlm" else "Model"
    architecture = next(a for a, t in ENCODER_ARCHITECTURES.items() if t == model_type and a.endswith(suffix))
    out = dict(architectures=[architecture], model_type=model_type, vocab_size=cfg.vocab_size,
               hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
               intermediate_size=cfg.mlp_dim, tie_word_embeddings=cfg.tied)
    if model_type != "modernbert":
        return dict(out, **cfg.position.to_hf(cfg), hidden_act="gelu", layer_norm_eps=cfg.eps,
                    type_vocab_size=cfg.type_vocab_size, position_embedding_type="absolute",
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, is_decoder=False,
                    # RoBERTa's padding_idx fixes where its positions start.
                    pad_token_id=cfg.position.offset - 1 if model_type == "roberta" else None)
    full_rope = cfg.position.to_hf(cfg)
    local_rope = (cfg.local_position or cfg.position).to_hf(cfg)
    full = cfg.layer_is_full or (not cfg.sliding_window,) * cfg.n_layers
    return dict(out, hidden_activation="gelu", classifier_activation="gelu", norm_eps=cfg.eps,
                max_position_embeddings=full_rope.get("max_position_embeddings", cfg.max_seq_len),
                norm_bias=False, attention_bias=False, mlp_bias=False, classifier_bias=False,
                decoder_bias=True,
                layer_types=[FULL if f else SLIDING for f in full],
                # HF's window is |i - j| <= local_attention // 2; ours |i - j| < sliding_window.
                local_attention=2 * max(cfg.sliding_window - 1, 0),
                rope_parameters={FULL: full_rope["rope_parameters"], SLIDING: local_rope["rope_parameters"]},
                global_rope_theta=full_rope["rope_theta"], local_rope_theta=local_rope["rope_theta"],
                embedding_dropout=0.0, mlp_dropout=0.0, attention_dropout=0.0,
                # ModernBertConfig's defaults name ids of its own 50k vocabulary.
                pad_token_id=None, bos_token_id=None, eos_token_id=None, cls_token_id=None,
                sep_token_id=None)
