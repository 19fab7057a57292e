"""ModelConfig: every architectural choice of a ctxjax Transformer, frozen and hashable.

One config covers five families:
- "llama": RMSNorm, SwiGLU, optional q/k/v (Qwen2) or q/k/v/o (Llama `attention_bias`) biases, GQA, optional
  per-head q/k norms (Qwen3).
- "gemma" (Gemma 2 and 3): RMSNorm scaled by (1 + w), embeddings times sqrt(d_model), tanh-GELU gated MLP, a
  second norm after attention and after the MLP (before each residual add), tied embeddings; optional soft
  caps on the attention scores and the output logits (Gemma 2).
- "gpt2": LayerNorm, tanh-GELU MLP, biases everywhere, learned absolute positions, tied embeddings.
- "bert" (BERT, RoBERTa; encoders): post-norm LayerNorm blocks (each branch added, then normalised), a
  LayerNorm on the embeddings, token-type embeddings, exact-GELU MLP, biases everywhere, learned absolute
  positions (RoBERTa's start at an offset), tied embeddings.
- "modernbert" (encoders): pre-norm LayerNorm without biases (none on the first layer's attention input), a
  LayerNorm on the embeddings and a final one, exact-GELU gated MLP (GeGLU), no biases, RoPE, alternating
  global and symmetric-window local layers, tied embeddings.

What follows the last layer is `head`: "lm" (decoders: logits = h @ embeddings^T or an lm_head), "mlm" (BERT's
masked-LM head: dense + GELU + LayerNorm, then the tied decoder plus a bias of its own) or "none" (a bare
encoder, whose output is the last hidden state).

Layers may differ in one way: with `full_attention_layers` set, those layers attend to the whole context with
`position`, and the others ("local" layers) use `sliding_window` and `local_position` (Gemma 3 alternates five
local layers with one global; Qwen2 windows only its upper layers).

The positional scheme is a value object from `ctxjax.positions` (e.g. `Rope(rope_type="yarn", factor=4)`).

This is what a model *is* — exactly what its checkpoints and `config.json` store. How it runs (kernel, tiles,
remat, compute dtype) is `ctxjax.execution.ExecutionConfig`; how training adapts it (LoRA, S²-Attn) is
`ctxjax.adaptation.AdaptationConfig`; which Hugging Face class an export writes is the export's business.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ctxjax import positions as positions_lib
from ctxjax.dataclass_config import replace_fields
from ctxjax.errors import InputError

FAMILIES = ("llama", "gemma", "gpt2", "bert", "modernbert")
ENCODER_FAMILIES = ("bert", "modernbert")
HEADS = ("lm", "mlm", "none")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (no grouping)
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int | None = None  # None: 4*d_model for gpt2, Llama's rounded 8/3*d_model for llama
    family: str = "llama"
    # Largest position the model is meant for: HF `max_position_embeddings` / GPT-2 `n_positions`.
    max_seq_len: int = 2048
    position: positions_lib.PositionScheme = dataclasses.field(default_factory=positions_lib.Rope)
    norm_eps: float | None = None  # None: 1e-6 (llama) or 1e-5 (gpt2)
    qkv_bias: bool | None = None  # None: family default (gpt2 yes, llama no)
    o_bias: bool | None = None
    mlp_bias: bool | None = None
    tie_embeddings: bool | None = None  # None: gpt2 yes, llama no
    # Qwen3: an RMSNorm over each head of q and of k (one scale per head dimension, shared by the heads),
    # before the rotation; it keeps attention logits bounded as training and context grow.
    qk_norm: bool = False
    param_dtype: str = "float32"  # dtype of the stored parameters (compute: ExecutionConfig.dtype)
    # Mistral's sliding window: each token attends to itself and the W - 1 positions before it; 0 = no window.
    sliding_window: int = 0
    # Layers (indices) that ignore sliding_window and rotate with `position`; the other layers use the window
    # and `local_position`. () = every layer alike. Gemma 3: every sixth layer; Qwen2: layers below
    # max_window_layers.
    full_attention_layers: tuple[int, ...] = ()
    # The positional scheme of the local layers when it differs from `position` (Gemma 3: RoPE base 10k
    # locally, 1M and the context scaling globally); None: `position`. Context extension rescales `position`
    # only.
    local_position: positions_lib.PositionScheme | None = None
    # Attention logits are scaled by query_pre_attn_scalar ** -0.5 (Gemma); None: head_dim ** -0.5.
    query_pre_attn_scalar: float | None = None
    # Gemma 2's soft caps: scores become C tanh(scores / C) in attention, and the output logits likewise; 0 =
    # none.
    attn_logit_softcapping: float = 0.0
    final_logit_softcapping: float = 0.0
    # False: every token attends to the tokens on both sides (encoders: BERT, RoBERTa, ModernBERT), a sliding
    # window is symmetric (|pos_q - pos_k| < sliding_window) and ALiBi biases by |pos_q - pos_k|.
    causal: bool = True
    # Token-type (segment A/B) embeddings: rows of a table whose row 0 is added to every token (BERT 2,
    # RoBERTa 1); 0 = none.
    type_vocab_size: int = 0
    # What the last hidden state feeds (see the module docstring); None: "mlm" for encoders, else "lm".
    head: str | None = None

    def __post_init__(self):
        if isinstance(self.full_attention_layers, list):  # from JSON (checkpoint metadata): hashable
            object.__setattr__(self, "full_attention_layers", tuple(self.full_attention_layers))
        self.validate()

    # ---- derived values (properties, so that a config never stores two copies of a fact) ----
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.family in ("gpt2", "bert"):
            return 4 * self.d_model
        return 256 * ((int(8 * self.d_model / 3) + 255) // 256)

    @property
    def eps(self) -> float:
        if self.norm_eps is not None:
            return self.norm_eps
        return {"gpt2": 1e-5, "bert": 1e-12, "modernbert": 1e-5}.get(self.family, 1e-6)

    @property
    def attention_scale(self) -> float:
        return float(self.query_pre_attn_scalar or self.dim_per_head) ** -0.5

    @property
    def layer_is_full(self) -> tuple[bool, ...] | None:
        """Per layer, whether it attends to the whole context with `position` (None: all layers alike)."""
        if not self.full_attention_layers:
            return None
        return tuple(i in self.full_attention_layers for i in range(self.n_layers))

    def _family_default(self, value: bool | None, gpt2: bool, llama: bool) -> bool:
        if value is not None:
            return value
        return gpt2 if self.family in ("gpt2", "bert") else llama

    @property
    def use_qkv_bias(self) -> bool:
        return self._family_default(self.qkv_bias, True, False)

    @property
    def use_o_bias(self) -> bool:
        return self._family_default(self.o_bias, True, False)

    @property
    def use_mlp_bias(self) -> bool:
        return self._family_default(self.mlp_bias, True, False)

    @property
    def tied(self) -> bool:
        return (self.tie_embeddings if self.tie_embeddings is not None
                else self.family in ("gpt2", "gemma", *ENCODER_FAMILIES))

    @property
    def output_head(self) -> str:
        """`head`, or the family's: "mlm" for encoders, "lm" for decoders."""
        return self.head or ("mlm" if self.family in ENCODER_FAMILIES else "lm")

    @property
    def gated_mlp(self) -> bool:
        """down(act(gate x) * up x) (llama, gemma, modernbert) rather than down(act(up x)) (gpt2, bert)."""
        return self.family not in ("gpt2", "bert")

    @property
    def projections(self) -> tuple[str, ...]:
        """Names of the per-layer projections (what AdaptationConfig.lora_targets may name)."""
        return ("q", "k", "v", "o", "up", "down") + (("gate",) if self.gated_mlp else ())

    def replace(self, **changes: Any) -> "ModelConfig":
        return replace_fields(self, changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (checkpoints, logs); `from_dict` inverts it exactly."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["full_attention_layers"] = list(out["full_attention_layers"])  # as JSON gives it back
        for name in ("position", "local_position"):
            scheme = out[name]
            if scheme is not None:
                fields = {f.name: getattr(scheme, f.name) for f in dataclasses.fields(scheme)}
                out[name] = {"name": scheme.name,
                             **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        for name in ("position", "local_position"):
            if isinstance(d.get(name), dict):
                fields = dict(d[name])
                d[name] = positions_lib.make(fields.pop("name"), **fields)
        return cls(**d)

    def validate(self) -> None:
        def fail(msg: str):
            raise InputError(f"ModelConfig: {msg}")

        if self.family not in FAMILIES:
            fail(f"family={self.family!r} is unknown; use one of {FAMILIES}")
        def positive_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            if not positive_int(getattr(self, name)):
                fail(f"{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("n_kv_heads", "head_dim", "d_ff"):
            if getattr(self, name) is not None and not positive_int(getattr(self, name)):
                fail(f"{name}={getattr(self, name)!r} must be a positive integer or None (the default)")
        if self.norm_eps is not None and not self.norm_eps > 0:
            fail(f"norm_eps={self.norm_eps!r} must be > 0 (or None: the family's default)")
        if self.head_dim is None and self.d_model % self.n_heads:
            fail(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim "
                 "explicitly")
        if self.n_heads % self.kv_heads:
            fail(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.kv_heads} (grouped-query "
                 "attention)")
        if self.param_dtype not in DTYPES:
            fail(f"param_dtype={self.param_dtype!r} is unknown; use one of {DTYPES}")
        if not isinstance(self.sliding_window, int) or self.sliding_window < 0:
            fail(f"sliding_window={self.sliding_window!r} must be an int >= 0 (0: attend to the whole "
                 "context)")
        layers = self.full_attention_layers
        if (not isinstance(layers, tuple)
            or any(not isinstance(i, int) or not 0 <= i < self.n_layers for i in layers)
                or list(layers) != sorted(set(layers))):
            fail(f"full_attention_layers={layers!r} must be increasing layer indices in [0, "
                 f"{self.n_layers}), e.g. (5, 11) (() : every layer alike)")
        if self.local_position is not None:
            if not layers:
                fail("local_position applies to the layers outside full_attention_layers; set "
                     "full_attention_layers (or drop local_position)")
            if not isinstance(self.local_position, positions_lib.PositionScheme):
                fail(f"local_position must be a ctxjax.positions scheme or None, got {self.local_position!r}")
            problem = self.position.check_local(self.local_position)
            if problem:
                fail(f"local_position: {problem}")
            self.local_position.validate(self)
        for name in ("attn_logit_softcapping", "final_logit_softcapping"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) >= 0:
                fail(f"{name}={getattr(self, name)!r} must be a number >= 0 (0: no cap; Gemma 2 uses 50 and "
                     "30)")
        if self.query_pre_attn_scalar is not None and not self.query_pre_attn_scalar > 0:
            fail(f"query_pre_attn_scalar={self.query_pre_attn_scalar!r} must be > 0 (or None: head_dim)")
        if not isinstance(self.causal, bool):
            fail(f"causal={self.causal!r} must be True (decoders) or False (encoders)")
        if self.family in ENCODER_FAMILIES and self.causal:
            fail(f"family={self.family!r} is an encoder: set causal=False")
        if self.head is not None and self.head not in HEADS:
            fail(f"head={self.head!r} is unknown; use one of {HEADS} (None: the family's)")
        if self.output_head == "mlm" and self.causal:
            fail("head='mlm' predicts masked tokens from both sides: set causal=False")
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            fail(f"type_vocab_size={self.type_vocab_size!r} must be an int >= 0 (0: no token-type "
                 "embeddings)")
        if self.qk_norm and self.family not in ("llama", "gemma"):
            fail("qk_norm (Qwen3's per-head q/k RMSNorm) belongs to the llama family; set family='llama'")
        if not isinstance(self.position, positions_lib.PositionScheme):
            fail("position must be a ctxjax.positions scheme (e.g. positions.make('rope')), got "
                 f"{self.position!r}")
        self.position.validate(self)
