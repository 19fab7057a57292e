"""Hugging Face `config.json` <-> ModelConfig, for the Llama family (llama, mistral, qwen2, qwen3, phi3),
Gemma 2 and 3 (text), GPT-2 and the encoders (BERT, RoBERTa, ModernBERT: `encoder_config`)."""

from __future__ import annotations

from typing import Any

from ctxjax.errors import InputError
from ctxjax import positions
from ctxjax.config import ENCODER_FAMILIES, ModelConfig
from ctxjax.hf.encoder_config import (ENCODER_ARCHITECTURES, encoder_config, encoder_fields,
                                      export_encoder_type)

LLAMA_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
}
GEMMA_ARCHITECTURES = {"Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text"}
# Gemma 3 4B and larger (the 128k models) ship as image+text checkpoints: ctxjax reads their language model,
# whose config is `text_config`, and exports it as a text-only Gemma3ForCausalLM.
MULTIMODAL_ARCHITECTURES = {"Gemma3ForConditionalGeneration": "gemma3"}
GPT2_ARCHITECTURES = {"GPT2LMHeadModel": "gpt2"}
SUPPORTED = {**LLAMA_ARCHITECTURES, **GEMMA_ARCHITECTURES, **MULTIMODAL_ARCHITECTURES, **GPT2_ARCHITECTURES,
             **ENCODER_ARCHITECTURES}
# Gemma 3's rope_parameters (transformers 5) hold one dict per kind of layer.
FULL, SLIDING = "full_attention", "sliding_attention"

_TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "float": "float32",
                 "half": "float16"}


def architecture(hf: dict[str, Any]) -> str:
    """The supported architecture named by config.json, or a one-line error listing the supported ones."""
    names = hf.get("architectures") or []
    found = [n for n in names if n in SUPPORTED]
    if not found:
        by_type = {v: k for k, v in SUPPORTED.items()}.get(hf.get("model_type", ""))
        if by_type and not names:
            return by_type
        raise InputError(f"unsupported architecture {names or hf.get('model_type')!r}; "
                         f"ctxjax loads {sorted(SUPPORTED)}")
    return found[0]


def _checkpoint_dtype(hf: dict[str, Any]) -> str:
    name = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").replace("torch.", "")
    return _TORCH_DTYPES.get(name, "float32")


def model_config_from_hf(hf: dict[str, Any], *, where: str = "config.json", **overrides: Any) -> ModelConfig:
    """The ModelConfig of a Hugging Face config dict; `where` names its file in error messages."""
    try:
        arch = architecture(hf)
        fields = _fields(hf, arch)
        ModelConfig(**fields)  # a config.json that describes no valid model is its file's fault
    except KeyError as error:
        raise InputError(f"{where} has no {error.args[0]!r}, which a {hf.get('architectures')} config needs; "
                         "is it the model's own config.json?") from None
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    except (TypeError, ValueError) as error:  # int("abc"), float(None): a value of the wrong kind
        raise InputError(f"{where} holds a value of the wrong type ({error}); compare it with the model's "
                         "original config.json") from None
    unknown = sorted(set(overrides) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise InputError(f"unknown override(s) {unknown}; overrides are ModelConfig fields: "
                         f"{sorted(ModelConfig.__dataclass_fields__)}")
    fields.update(overrides)
    return ModelConfig(**fields)


def _fields(hf: dict[str, Any], arch: str) -> dict[str, Any]:
    dtype = _checkpoint_dtype(hf)
    if arch in GPT2_ARCHITECTURES:
        fields = _gpt2_fields(hf)
    elif arch in ENCODER_ARCHITECTURES:
        fields = encoder_fields(hf, arch)
    elif arch in GEMMA_ARCHITECTURES:
        fields = _gemma_fields(hf, GEMMA_ARCHITECTURES[arch])
    elif arch in MULTIMODAL_ARCHITECTURES:
        # The language model alone; the vision tower's weights are left out.
        text = {"tie_word_embeddings": hf.get("tie_word_embeddings", True), **(hf.get("text_config") or {})}
        fields = _gemma_fields(text, "gemma3_text")  # exported as the text-only Gemma3ForCausalLM
    else:
        fields = _llama_fields(hf, LLAMA_ARCHITECTURES[arch])
    fields.update(param_dtype=dtype)
    return fields


def _llama_fields(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise InputError(f"hidden_act={act!r} is not supported for the Llama family; ctxjax implements "
                         "SwiGLU (silu)")
    max_pos = int(hf.get("max_position_embeddings", 2048))
    bias = bool(hf.get("attention_bias", False))
    return dict(
        family="llama",
        vocab_size=int(hf["vocab_size"]),
        d_model=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=int(hf["num_attention_heads"]),
        n_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        head_dim=hf.get("head_dim") or (128 if model_type == "qwen3" else None),  # Qwen3Config's default
        d_ff=int(hf["intermediate_size"]),
        max_seq_len=max_pos,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=True if model_type == "qwen2" else bias,
        o_bias=False if model_type == "qwen2" else bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        position=positions.Rope.from_hf(hf),
        qk_norm=model_type == "qwen3",
        **_windows(hf, model_type),
    )


def _gemma_fields(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
    """Gemma2Config / Gemma3TextConfig as transformers 5 reads them (their defaults where a key is absent).
    Gemma 2: every other layer local, one RoPE for all, soft caps 50 (attention) and 30 (logits) by default;
    Gemma 3: every sixth layer global, q/k norms, a local RoPE base of its own, no caps by default."""
    gemma3 = model_type == "gemma3_text"
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_new"):
        raise InputError(f"hidden_activation={act!r} is not supported for Gemma; ctxjax implements the tanh "
                         "GELU")
    if hf.get("use_bidirectional_attention"):
        raise InputError("use_bidirectional_attention=true makes an encoder; ctxjax trains causal decoders")
    n_layers = int(hf.get("num_hidden_layers", 26))
    pattern = int(hf.get("sliding_window_pattern", 6)) if gemma3 else 2
    full = _full_layers(hf, n_layers, lambda i: (i + 1) % pattern == 0)
    window = int(hf.get("sliding_window", 4096) or 0)
    if len(full) < n_layers and not window:
        raise InputError("config.json gives Gemma local (sliding_attention) layers but no sliding_window, "
                         "which transformers cannot run either; set sliding_window (Gemma uses 4096, Gemma 3 "
                         "1B 512)")
    max_pos = int(hf.get("max_position_embeddings", 131072 if gemma3 else 8192))
    if gemma3:
        full_rope, local_rope = (positions.Rope.from_hf({"max_position_embeddings": max_pos,
                                                         "rope_parameters": p})
                                 for p in _gemma3_rope_parameters(hf))
        # All layers of one kind rotate alike: with that kind's RoPE.
        rotation = (dict(position=local_rope) if not full else dict(position=full_rope)
                    if len(full) == n_layers
                    else dict(position=full_rope, local_position=local_rope))
    else:
        rotation = dict(position=positions.Rope.from_hf(hf))
    bias = bool(hf.get("attention_bias", False))
    return dict(
        family="gemma",
        vocab_size=int(hf.get("vocab_size", 262208 if gemma3 else 256000)),
        d_model=int(hf.get("hidden_size", 2304)),
        n_layers=n_layers,
        n_heads=int(hf.get("num_attention_heads", 8)),
        n_kv_heads=int(hf.get("num_key_value_heads") or 4),  # both classes' default
        head_dim=int(hf.get("head_dim") or 256),
        d_ff=int(hf.get("intermediate_size", 9216)),
        max_seq_len=max_pos,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=bias, o_bias=bias, mlp_bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        qk_norm=gemma3,
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
        # Gemma 2's caps default to 50 and 30; Gemma 3's attention never applies the cap its config may name
        # (transformers 5 passes it to no kernel).
        attn_logit_softcapping=0.0 if gemma3 else float(hf.get("attn_logit_softcapping", 50.0) or 0.0),
        final_logit_softcapping=float(hf.get("final_logit_softcapping", None if gemma3 else 30.0) or 0.0),
        # Kept when every layer is full: the export writes it back, and transformers needs it.
        sliding_window=window,
        full_attention_layers=full,
        **rotation,
    )


def _full_layers(hf: dict[str, Any], n_layers: int, full_by_default) -> tuple[int, ...]:
    """The layers config.json's `layer_types` marks full_attention (the rest are sliding_attention); without
    the key, those for which `full_by_default(i)` holds, as the config class fills it in."""
    types = hf.get("layer_types") or [FULL if full_by_default(i) else SLIDING for i in range(n_layers)]
    if len(types) != n_layers or set(types) - {FULL, SLIDING}:
        raise InputError(f"layer_types must name {n_layers} layers, each {FULL!r} or {SLIDING!r}; got "
                         f"{types}")
    return tuple(i for i, t in enumerate(types) if t == FULL)


def _gemma3_rope_parameters(hf: dict[str, Any]) -> tuple[dict, dict]:
    """(global, local) RoPE settings: transformers 5's per-layer-type `rope_parameters`, or 4.x's
    `rope_theta` + `rope_scaling` (global) and `rope_local_base_freq` (local); global base 1M and local 10k by
    default."""
    per_type = hf.get("rope_parameters") or {}
    full = dict(per_type.get(FULL) or {"rope_type": "default"})
    local = dict(per_type.get(SLIDING) or {"rope_type": "default"})
    full.update(hf.get("rope_scaling") or {})  # transformers 5 applies a legacy rope_scaling on top
    full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
    return full, local


def _windows(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
    """sliding_window and full_attention_layers as transformers reads config.json: Mistral's window on every
    layer (4096 when the key is absent), Phi-3's likewise; Qwen2's and Qwen3's when use_sliding_window is on,
    on the layers `layer_types` names, by default those from max_window_layers up; Llama has none."""
    if model_type == "mistral":
        return dict(sliding_window=int(hf.get("sliding_window", 4096) or 0))
    if model_type == "phi3":
        return dict(sliding_window=int(hf.get("sliding_window") or 0))
    if (model_type not in ("qwen2", "qwen3") or not hf.get("use_sliding_window")
            or not hf.get("sliding_window")):
        return dict(sliding_window=0)
    n_layers = int(hf["num_hidden_layers"])
    first_windowed = int(hf.get("max_window_layers", 28))
    full = _full_layers(hf, n_layers, lambda i: i < first_windowed)
    if len(full) == n_layers:
        return dict(sliding_window=0)
    return dict(sliding_window=int(hf["sliding_window"]), full_attention_layers=full)


def _gpt2_fields(hf: dict[str, Any]) -> dict[str, Any]:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise InputError(f"GPT-2 activation_function={act!r} is not supported; ctxjax implements the tanh "
                         "GELU ('gelu_new')")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise InputError("GPT-2 attention scaling other than 1/sqrt(head_dim) "
                         "(scale_attn_by_inverse_layer_idx, scale_attn_weights=false) is not supported")
    d = int(hf.get("n_embd", hf.get("hidden_size", 768)))
    return dict(
        family="gpt2",
        vocab_size=int(hf["vocab_size"]),
        d_model=d,
        n_layers=int(hf.get("n_layer", hf.get("num_hidden_layers", 12))),
        n_heads=int(hf.get("n_head", hf.get("num_attention_heads", 12))),
        d_ff=int(hf.get("n_inner") or 4 * d),
        max_seq_len=int(hf.get("n_positions", hf.get("max_position_embeddings", 1024))),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        position=positions.Learned(),
    )


def hf_config_from_model(cfg: ModelConfig, architecture: str = "") -> dict[str, Any]:
    """A config.json dict that transformers 4.x and 5.x read to the same model (per-layer windows other than
    Qwen's leading full layers and Gemma's regular pattern are spelled out only in 5.x's `layer_types`).
    `architecture`: the class to prefer (an imported model's own) when it computes the model."""
    if not cfg.causal and cfg.family not in ENCODER_FAMILIES:
        raise InputError(f"a bidirectional (causal=False) {cfg.family} model has no Hugging Face class; "
                         f"export encoders of a family in {ENCODER_FAMILIES}, or set causal=True")
    if cfg.output_head != "lm" and cfg.family not in ENCODER_FAMILIES:
        raise InputError(f"a {cfg.family} model with head={cfg.output_head!r} has no Hugging Face class; "
                         "decoders export with head='lm'")
    if cfg.type_vocab_size and cfg.family != "bert":
        raise InputError(f"token-type embeddings (type_vocab_size={cfg.type_vocab_size}) exist in Hugging "
                         f"Face BERT and RoBERTa only, not in a {cfg.family} model; set type_vocab_size=0")
    if cfg.family in ENCODER_FAMILIES and cfg.family not in cfg.position.hf_families:
        raise InputError(f"a {cfg.family} model with positional scheme {cfg.position.name!r} has no Hugging "
                         f"Face equivalent; export {cfg.family} models with "
                         f"{'learned' if cfg.family == 'bert' else 'rope'} positions")
    if cfg.family not in cfg.position.hf_families:
        raise InputError(f"a {cfg.family} model with positional scheme {cfg.position.name!r} has no Hugging "
                         f"Face equivalent; export {cfg.family} models with "
                         f"{'rope' if cfg.family == 'llama' else 'learned'} positions")
    if cfg.family in ENCODER_FAMILIES:
        return {**encoder_config(cfg), "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype}
    if cfg.family == "gemma":
        return {**_gemma_config(cfg), "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype,
                "use_cache": True}
    out = _gpt2_config(cfg) if cfg.family == "gpt2" else _llama_config(cfg, architecture)
    out.update(cfg.position.to_hf(cfg))
    out.update(torch_dtype=cfg.param_dtype, dtype=cfg.param_dtype, use_cache=True)
    return out


def _unfit(cfg: ModelConfig, model_type: str) -> str:
    """Why the transformers class of `model_type` cannot compute this model ("" if it can)."""
    qkv, o, mlp = cfg.use_qkv_bias, cfg.use_o_bias, cfg.use_mlp_bias
    written = cfg.position.to_hf(cfg)  # what config.json would say about positions
    partial = "partial_rotary_factor" in written
    if cfg.query_pre_attn_scalar not in (None, cfg.dim_per_head):
        return "scores scaled by 1/sqrt(head_dim) only"
    if cfg.attn_logit_softcapping or cfg.final_logit_softcapping:
        return "no soft caps"
    if cfg.full_attention_layers and cfg.sliding_window and model_type not in ("qwen2", "qwen3"):
        return "one window for every layer"
    if (model_type == "qwen3") != cfg.qk_norm:
        return "q/k norms always" if model_type == "qwen3" else "no q/k norms"
    if model_type == "qwen3":
        return ("q/k/v/o biases only together, none on the MLP" if qkv != o or mlp else
                "rotates whole heads only" if partial else "")
    if model_type == "llama":
        return ("no sliding window" if cfg.sliding_window else "rotates whole heads only" if partial
                else "q/k/v/o biases only together" if qkv != o else "")
    if model_type == "mistral":
        return "no biases" if qkv or o or mlp else "rotates whole heads only" if partial else ""
    if model_type == "qwen2":
        return ("biases on q/k/v only" if not qkv or o or mlp else "rotates whole heads only" if partial
                else "")
    # phi3: Phi3Config validates its RoPE as default or longrope and sizes LongRoPE's lists by hidden / heads.
    if (written.get("rope_parameters") or {}).get("rope_type", "default") not in ("default", "longrope"):
        return "default or longrope RoPE only"
    return ("no biases" if qkv or o or mlp else
            "head_dim = hidden_size / heads only" if cfg.dim_per_head * cfg.n_heads != cfg.d_model else "")


def _gemma_unfit(cfg: ModelConfig) -> str:
    """Why neither Gemma class can compute this gemma-family model ("" if one can): Gemma 3 has q/k norms,
    Gemma 2 has none and one RoPE for every layer."""
    for scheme in (cfg.position, cfg.local_position or cfg.position):
        if scheme.name != "rope" or scheme.partial_rotary_factor != 1.0:
            return "RoPE on whole heads only"
    if 0 < len(cfg.full_attention_layers) < cfg.n_layers and not cfg.sliding_window:
        return "local layers need a sliding window: keep sliding_window > 0 (Gemma's is 4096)"
    if not float(cfg.query_pre_attn_scalar or cfg.dim_per_head).is_integer():
        return "a whole-number query_pre_attn_scalar"
    if not cfg.qk_norm and cfg.local_position not in (None, cfg.position):
        return "Gemma 2 rotates every layer alike (a local_position needs Gemma 3's q/k norms)"
    if cfg.qk_norm and cfg.attn_logit_softcapping:
        return "Gemma 3 (q/k norms) caps no attention scores: set attn_logit_softcapping=0"
    return ("q/k/v/o biases only together, none on the MLP"
            if cfg.use_qkv_bias != cfg.use_o_bias or cfg.use_mlp_bias else "")


def rereads_on_rope_switch(architecture: str) -> bool:
    """Whether transformers' class `architecture` drops its KV cache and reads the whole sequence again when a
    sequence-dependent rotation switches during generation (Phi-3, when LongRoPE passes L0): what
    `ctxjax.generate(..., reread_on_switch=)` matches."""
    return architecture == "Phi3ForCausalLM"


def export_model_type(cfg: ModelConfig, architecture: str = "") -> str:
    """The class an export writes: Gemma 3 (q/k norms) or Gemma 2 for the gemma family; for the Llama family
    `architecture` (the imported model's own class) when that class computes the model, else the first of
    Llama, Mistral, Qwen2, Phi-3, Qwen3 that does (a one-line error if none does); bert, roberta or
    modernbert for an encoder."""
    if cfg.family in ENCODER_FAMILIES:
        return export_encoder_type(cfg)
    if cfg.family == "gemma":
        reason = _gemma_unfit(cfg)
        if reason:
            raise InputError(f"no Hugging Face Gemma class computes this model ({reason}); change the model "
                             "to fit")
        return "gemma3_text" if cfg.qk_norm else "gemma2"
    if cfg.local_position is not None:
        raise InputError("no Hugging Face Llama-family class rotates some layers differently "
                         "(local_position); use local_position=None, or family='gemma'")
    own = LLAMA_ARCHITECTURES.get(architecture)
    candidates = ([own] if own else []) + ["llama", "mistral", "qwen2", "phi3", "qwen3"]
    reasons = {t: _unfit(cfg, t) for t in candidates}
    fitting = [t for t in candidates if not reasons[t]]
    if not fitting:
        raise InputError("no Hugging Face Llama-family class computes this model ("
                         + "; ".join(f"{t}: {reasons[t]}" for t in dict.fromkeys(candidates))
                         + "); change the model to fit one of them")
    return fitting[0]


def _llama_config(cfg: ModelConfig, architecture: str) -> dict[str, Any]:
    model_type = export_model_type(cfg, architecture)
    out = dict(
        architectures=[next(a for a, t in LLAMA_ARCHITECTURES.items() if t == model_type)],
        model_type=model_type,
        **_decoder_sizes(cfg),
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
    )
    window = cfg.sliding_window or None
    if model_type in ("qwen2", "qwen3"):
        # transformers 5 reads layer_types; 4.x windows the layers from max_window_layers up (the leading full
        # ones).
        types = _layer_types(cfg)
        leading = next((i for i, t in enumerate(types) if t == SLIDING), cfg.n_layers)
        out.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=leading)
        if window is not None:
            out.update(layer_types=types)
        if model_type == "qwen3":
            out.update(attention_bias=cfg.use_qkv_bias)
    elif model_type in ("mistral", "phi3"):
        out.update(sliding_window=window)
    else:
        out.update(attention_bias=cfg.use_qkv_bias, mlp_bias=cfg.use_mlp_bias)
    if model_type == "phi3":
        # Phi3Config's defaults would otherwise apply: L0 4096 (the longrope switch, also where its generate
        # re-reads the prompt) and pad id 32000 (outside a small vocabulary).
        out.update(original_max_position_embeddings=cfg.max_seq_len, pad_token_id=None,
                   resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    return out


def _gemma_config(cfg: ModelConfig) -> dict[str, Any]:
    model_type = export_model_type(cfg)  # also the one-line refusal if no Gemma class computes it
    full_rope = cfg.position.to_hf(cfg)
    out = dict(
        architectures=[next(a for a, t in GEMMA_ARCHITECTURES.items() if t == model_type)],
        model_type=model_type,
        **_decoder_sizes(cfg),
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=full_rope.get("max_position_embeddings", cfg.max_seq_len),
        attention_bias=cfg.use_qkv_bias,
        # Whole (checked); the configs want int.
        query_pre_attn_scalar=int(cfg.query_pre_attn_scalar or cfg.dim_per_head),
        # transformers builds a sliding mask even when no layer uses it, so a window-less model gets its
        # context.
        sliding_window=cfg.sliding_window or cfg.max_seq_len,
        layer_types=_layer_types(cfg),
        attn_logit_softcapping=cfg.attn_logit_softcapping or None,
        final_logit_softcapping=cfg.final_logit_softcapping or None,
        attention_dropout=0.0,
    )
    if model_type == "gemma2":
        return {**out, **full_rope}
    full_layers = set(cfg.full_attention_layers)
    # Early transformers 4.x versions of Gemma 3 read only this period.
    every = min(full_layers, default=-1) + 1
    if every and full_layers == {i for i in range(cfg.n_layers) if (i + 1) % every == 0}:
        out["sliding_window_pattern"] = every
    local_params = (cfg.local_position or cfg.position).to_hf(cfg)["rope_parameters"]
    full_params = full_rope["rope_parameters"]
    # transformers 5 reads rope_parameters per kind of layer; 4.x reads the three keys after it.
    return dict(out, rope_parameters={FULL: full_params, SLIDING: local_params},
                rope_theta=full_params["rope_theta"], rope_scaling=full_rope["rope_scaling"],
                rope_local_base_freq=local_params["rope_theta"], use_bidirectional_attention=False)


def _decoder_sizes(cfg: ModelConfig) -> dict[str, Any]:
    """The size keys Llama-family and Gemma configs share."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
                num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head, rms_norm_eps=cfg.eps,
                tie_word_embeddings=cfg.tied)


def _layer_types(cfg: ModelConfig) -> list[str]:
    """transformers' `layer_types`: the full_attention_layers full, the rest sliding (all full without a
    window)."""
    full = cfg.layer_is_full or (not cfg.sliding_window,) * cfg.n_layers
    return [FULL if f else SLIDING for f in full]


def _gpt2_config(cfg: ModelConfig) -> dict[str, Any]:
    plain_heads = cfg.head_dim in (None, cfg.d_model // cfg.n_heads) and cfg.kv_heads == cfg.n_heads
    if cfg.position.offset:
        raise InputError(f"Hugging Face GPT-2 reads position p from row p of its table; a table offset "
                         f"({cfg.position.offset}) is RoBERTa's (family='bert'): set offset=0")
    if not (cfg.use_qkv_bias and cfg.use_o_bias and cfg.use_mlp_bias and plain_heads):
        raise InputError("Hugging Face GPT-2 needs biases everywhere, head_dim = d_model / n_heads and no "
                         "grouped-query attention; keep the gpt2 family defaults")
    return dict(
        architectures=["GPT2LMHeadModel"],
        model_type="gpt2",
        vocab_size=cfg.vocab_size,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.mlp_dim,
        n_positions=cfg.max_seq_len,
        layer_norm_epsilon=cfg.eps,
        activation_function="gelu_new",
        tie_word_embeddings=cfg.tied,
        scale_attn_weights=True,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
