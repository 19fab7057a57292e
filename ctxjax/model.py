"""The ctxjax Transformer: embed -> n_layers x (attention, MLP) -> norm -> head, one pure flax.linen module;
a decoder (causal, logits) or an encoder (BERT, RoBERTa, ModernBERT: bidirectional, a masked-LM head or none).

    model = Transformer(cfg)                  # cfg: ModelConfig, what the model is
    model = Transformer(cfg, execution=ExecutionConfig(attention="blockwise"),
                        adaptation=AdaptationConfig(...))
    params = model.init(rng, tokens)["params"]
    logits = model.apply({"params": params}, tokens, positions=None, segment_ids=None)  # float32 [B, L, V]
    logits, cache = model.apply({"params": params}, tokens, positions, segment_ids, cache=cache)  # decoding

Layers are stacked with `nn.scan` (compile time does not grow with depth; every layer parameter has a
leading `layers` axis) and optionally rematerialised (`ExecutionConfig.remat`). Parameters and activations
carry logical axis names (batch, length, embed, heads, kv_heads, head_dim, mlp, vocab, layers); a table
in the training config maps them to mesh axes, so nothing here names a device axis.

KV-cache decoding (ctxjax.generate) passes a `KVCache` and gets the updated one back. The new tokens' keys
are rotated with their own positions and written at slots [cache.length, cache.length + L); the kernel then
sees every slot with its stored position and segment id, and empty slots and padding have segment id 0, so
the kernel's ordinary rule (same segment, key position <= query position) is the whole decoding mask.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ctxjax import attention as attention_lib
from ctxjax.adaptation import AdaptationConfig
from ctxjax.attention.shifted import shifted_sparse_attention
from ctxjax.config import ModelConfig
from ctxjax.errors import InputError
from ctxjax.execution import REMAT_POLICIES, ExecutionConfig


_INIT = nn.initializers.normal(stddev=0.02)


def _param(init, axes):
    return nn.with_logical_partitioning(init, axes)


def _constrain(x, axes):
    return nn.with_logical_constraint(x, axes)


LAYER_NORM_FAMILIES = ("gpt2", "bert", "modernbert")  # the rest use RMSNorm
NORM_BIAS_FAMILIES = ("gpt2", "bert")  # ModernBERT's LayerNorms have no bias
POST_NORM_FAMILIES = ("bert",)  # x = norm(x + branch(x)); no final norm (the embeddings are normalised)
EMBED_NORM_FAMILIES = ("bert", "modernbert")
# The MLP's activation (and the masked-LM head's): tanh-GELU for GPT-2 and Gemma, exact (erf) GELU for the
# encoders, SiLU (SwiGLU) for llama.
ACTIVATIONS = {"llama": jax.nn.silu, "gemma": functools.partial(jax.nn.gelu, approximate=True),
               "gpt2": functools.partial(jax.nn.gelu, approximate=True),
               "bert": functools.partial(jax.nn.gelu, approximate=False),
               "modernbert": functools.partial(jax.nn.gelu, approximate=False)}


class Norm(nn.Module):
    """RMSNorm (llama) or LayerNorm (gpt2, bert; modernbert without bias), normalised in float32 and cast back
    before the scale, as HF does; Gemma's RMSNorm scales by (1 + w) in float32 and casts after (its weights
    start at zero)."""

    cfg: ModelConfig
    dtype: str  # the compute dtype
    axis: str = "embed"  # logical name of the normalised axis (Qwen3's q/k norms: head_dim)

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        d = x.shape[-1]
        h = x.astype(jnp.float32)
        if cfg.family in LAYER_NORM_FAMILIES:
            h = h - jnp.mean(h, axis=-1, keepdims=True)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + cfg.eps)
        gemma = cfg.family == "gemma"
        init = nn.initializers.zeros if gemma else nn.initializers.ones
        scale = self.param("scale", _param(init, (self.axis,)), (d,), jnp.dtype(cfg.param_dtype))
        if gemma:
            return (h * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
        h = h.astype(self.dtype) * scale.astype(self.dtype)
        if cfg.family in NORM_BIAS_FAMILIES:
            bias = self.param("bias", _param(nn.initializers.zeros, ("embed",)), (d,),
                              jnp.dtype(cfg.param_dtype))
            h = h + bias.astype(self.dtype)
        return h


class Dense(nn.Module):
    """x[..., in_axes] @ kernel[in_axes, out_axes] (+ bias), the kernel stored in its full multi-axis shape
    with logical names. (flax's DenseGeneral initialises a flattened kernel and reshapes it, which breaks
    the logical sharding constraint under a mesh.)"""

    param_dtype: str
    dtype: str  # the compute dtype
    features: tuple[int, ...]
    n_in: int  # how many trailing axes of x are contracted
    kernel_axes: tuple[str, ...]
    use_bias: bool
    adaptation: AdaptationConfig = AdaptationConfig()

    @nn.compact
    def __call__(self, x):
        shape = (*x.shape[x.ndim - self.n_in:], *self.features)
        kernel = self.param("kernel", _param(_INIT, self.kernel_axes), shape, jnp.dtype(self.param_dtype))
        # One 2-D matmul over all leading axes: XLA:CPU runs the weight gradient of a [B, L, D] contraction
        # 2-4x slower than the same product on [B*L, D].
        lead, n_in = x.shape[:x.ndim - self.n_in], math.prod(shape[:self.n_in])
        x2d = x.astype(self.dtype).reshape(-1, n_in)  # [B*L, in]
        y = (x2d @ kernel.astype(self.dtype).reshape(n_in, -1)).reshape(*lead, *self.features)  # [B, L, *out]
        if self.name in self.adaptation.adapted:
            y = y + self._adapter(x2d, shape).reshape(y.shape)
        if self.use_bias:
            bias = self.param("bias", _param(nn.initializers.zeros, self.kernel_axes[self.n_in:]),
                              self.features, jnp.dtype(self.param_dtype))
            y = y + bias.astype(self.dtype)
        return y

    def _adapter(self, x2d, shape):
        """LoRA: (x @ A) @ B * alpha / rank. A starts uniform in +-1/sqrt(fan_in) (as PEFT's Kaiming init), B
        at zero, so a fresh adapter changes nothing. The rank axis is never sharded."""
        n_in, rank = math.prod(shape[:self.n_in]), self.adaptation.lora_rank
        bound = n_in ** -0.5
        a_init = lambda key, s, dtype: jax.random.uniform(key, s, dtype, -bound, bound)  # noqa: E731
        a = self.param("lora_a", _param(a_init, (*self.kernel_axes[:self.n_in], None)),
                       (*shape[:self.n_in], rank), jnp.dtype(self.param_dtype))  # [*in, r]
        b = self.param("lora_b", _param(nn.initializers.zeros, (None, *self.kernel_axes[self.n_in:])),
                       (rank, *shape[self.n_in:]), jnp.dtype(self.param_dtype))  # [r, *out]
        scale = float(self.adaptation.lora_alpha) / rank
        return ((x2d @ a.astype(self.dtype).reshape(n_in, rank))
                @ (b.astype(self.dtype).reshape(rank, -1) * scale))


def _dense(cfg: ModelConfig, run: ExecutionConfig, adaptation: AdaptationConfig, features, axis, kernel_axes,
           use_bias, name):
    features = features if isinstance(features, tuple) else (features,)
    n_in = len(axis) if isinstance(axis, tuple) else 1
    return Dense(cfg.param_dtype, run.dtype, features, n_in, tuple(kernel_axes), use_bias, adaptation,
                 name=name)


class KVCache(NamedTuple):
    """Every layer's keys (after rotation, as HF caches them) and values for `S` slots of each batch row.

    Slot s of row b holds a token at `positions[b, s]` in segment `segment_ids[b, s]`; segment 0 marks an
    empty slot or padding, which no query (segment >= 1) can see. `length` slots are filled in every row
    (rows of different lengths are left-padded); the next call writes its tokens from slot `length` on.
    """

    # Heads before slots: the layout the attention's batched matmuls read, so a decoding step reads each
    # layer's cache as it is instead of a transposed copy of it.
    k: jax.Array  # [n_layers, B, kv_heads, S, head_dim]
    v: jax.Array  # [n_layers, B, kv_heads, S, head_dim]
    positions: jax.Array  # [B, S] int32
    segment_ids: jax.Array  # [B, S] int32
    length: jax.Array  # [] int32


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: str = "float32") -> KVCache:
    """An empty cache of `max_len` slots per row, in the activation dtype."""
    shape = (cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.dim_per_head)
    slots = jnp.zeros((batch, max_len), jnp.int32)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), slots, slots, jnp.zeros((), jnp.int32))


class Attention(nn.Module):
    cfg: ModelConfig
    run: ExecutionConfig
    adaptation: AdaptationConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, cache_slots=None, layer_kv=None, is_full=None):
        """`cache_slots` (kv positions [B, S], kv segment ids [B, S], write index) and `layer_kv` (every
        layer's cached k, v [n_layers, B, G, S, Dh] and this layer's index) are given only when decoding; then
        the updated (k, v) of all layers is returned as the second output. `is_full` (traced bool) says
        whether this layer is one of `cfg.full_attention_layers`; None when all layers are alike."""
        cfg, run, adaptation = self.cfg, self.run, self.adaptation
        h, g, dh = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        dense = functools.partial(_dense, cfg, run, adaptation)
        q = dense((h, dh), -1, ("embed", "heads", "head_dim"), cfg.use_qkv_bias, "q")(x)  # [B, L, H, Dh]
        k = dense((g, dh), -1, ("embed", "kv_heads", "head_dim"), cfg.use_qkv_bias, "k")(x)  # [B, L, G, Dh]
        v = dense((g, dh), -1, ("embed", "kv_heads", "head_dim"), cfg.use_qkv_bias, "v")(x)  # [B, L, G, Dh]
        if cfg.qk_norm:
            q = Norm(cfg, run.dtype, "head_dim", name="q_norm")(q)
            k = Norm(cfg, run.dtype, "head_dim", name="k_norm")(k)
        if is_full is None or cfg.local_position is None:
            q, k = cfg.position.rotate(q, k, positions)
        else:  # both rotations are cheap next to attention; the layer's flag picks one
            (q_full, k_full), (q, k) = (cfg.position.rotate(q, k, positions),
                                        cfg.local_position.rotate(q, k, positions))
            q, k = jnp.where(is_full, q_full, q), jnp.where(is_full, k_full, k)
        q = _constrain(q, ("batch", "length", "heads", "head_dim"))
        k = _constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = _constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        kv_positions, kv_segment_ids, new_kv = positions, segment_ids, None
        if layer_kv is not None:
            # The new slots are written into the whole cache in place: a cache scanned over as per-layer
            # slices would be copied in and out of every layer at every decoded token.
            kv_positions, kv_segment_ids, index = cache_slots
            k_all, v_all, layer = layer_kv
            at = (layer, 0, 0, index, 0)
            k_all, v_all = (lax.dynamic_update_slice(every, jnp.swapaxes(new, 1, 2)[None].astype(every.dtype),
                                                     at)
                            for every, new in ((k_all, k), (v_all, v)))  # [n_layers, B, G, S, Dh]
            k, v = (jnp.swapaxes(lax.dynamic_index_in_dim(every, layer, keepdims=False), 1, 2)
                    for every in (k_all, v_all))  # [B, S, G, Dh], as every kernel takes them
            new_kv = (k_all, v_all)
        kernel = attention_lib.get_kernel(run.attention)
        if adaptation.shifted_sparse_group and layer_kv is None:  # S²-Attn trains; decoding sees everything
            kernel = functools.partial(shifted_sparse_attention, kernel,
                                       group=adaptation.shifted_sparse_group)

        def attend(window):
            return kernel(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                          q_positions=positions, kv_positions=kv_positions, scale=cfg.attention_scale,
                          alibi_slopes=cfg.position.alibi_slopes(h), sliding_window=window,
                          logit_softcap=cfg.attn_logit_softcapping, block_q=run.attention_block_q,
                          block_k=run.attention_block_k, causal=cfg.causal)  # [B, L, H, Dh]

        if is_full is None or not cfg.sliding_window:
            out = attend(cfg.sliding_window)
        else:
            # The window is static in every kernel (it decides which tiles run): one branch per kind of layer.
            out = lax.cond(is_full, lambda: attend(0), lambda: attend(cfg.sliding_window))
        out = _constrain(out, ("batch", "length", "heads", "head_dim"))
        return dense(cfg.d_model, (-2, -1), ("heads", "head_dim", "embed"), cfg.use_o_bias, "o")(out), new_kv


class Mlp(nn.Module):
    """Gated, down(act(gate x) * up x): SwiGLU (llama), tanh-GELU (gemma), GeGLU (modernbert); or plain,
    down(act(up x)): tanh-GELU (gpt2), exact GELU (bert). See ACTIVATIONS."""

    cfg: ModelConfig
    run: ExecutionConfig
    adaptation: AdaptationConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dense = functools.partial(_dense, cfg, self.run, self.adaptation)
        act = ACTIVATIONS[cfg.family]
        up = dense(cfg.mlp_dim, -1, ("embed", "mlp"), cfg.use_mlp_bias, "up")(x)  # [B, L, F]
        if cfg.gated_mlp:
            h = act(dense(cfg.mlp_dim, -1, ("embed", "mlp"), cfg.use_mlp_bias, "gate")(x)) * up  # [B, L, F]
        else:
            h = act(up)
        h = _constrain(h, ("batch", "length", "mlp"))
        return dense(cfg.d_model, -1, ("mlp", "embed"), cfg.use_mlp_bias, "down")(h)  # [B, L, D]


class Block(nn.Module):
    """Pre-norm residual block (Gemma also normalises each branch's output before adding it; BERT normalises
    after each add instead); shaped (carry, per-layer inputs) -> (carry, None) for nn.scan. The carry is x,
    or (x, (k, v) of every layer's cache) when decoding. The per-layer inputs are the layer's index (None
    outside decoding), is_full (None when all layers are alike) and is_first (ModernBERT, whose first layer
    takes the normalised embeddings as they are; else None)."""

    cfg: ModelConfig
    run: ExecutionConfig
    adaptation: AdaptationConfig

    @nn.compact
    def __call__(self, carry, positions, segment_ids, cache_slots=None, layer=None, is_full=None,
                 is_first=None):
        cfg, dtype = self.cfg, self.run.dtype
        x, layer_kv = (carry, None) if layer is None else (carry[0], (*carry[1], layer))
        attn_norm, mlp_norm = Norm(cfg, dtype, name="attn_norm"), Norm(cfg, dtype, name="mlp_norm")
        post = cfg.family in POST_NORM_FAMILIES
        attn_in = x if post else attn_norm(x)
        if is_first is not None:
            attn_in = jnp.where(is_first, x, attn_in)
        attn_out, new_kv = Attention(cfg, self.run, self.adaptation, name="attn")(
            attn_in, positions, segment_ids, cache_slots, layer_kv, is_full)
        if cfg.family == "gemma":
            attn_out = Norm(cfg, dtype, name="attn_post_norm")(attn_out)
        x = x + attn_out  # [B, L, D]
        if post:
            x = attn_norm(x)
        mlp_out = Mlp(cfg, self.run, self.adaptation, name="mlp")(x if post else mlp_norm(x))
        if cfg.family == "gemma":
            mlp_out = Norm(cfg, dtype, name="mlp_post_norm")(mlp_out)
        x = x + mlp_out
        if post:
            x = mlp_norm(x)
        x = _constrain(x, ("batch", "length", "embed"))
        return (x if layer is None else (x, new_kv)), None


def _remat_policy(run: ExecutionConfig, adaptation: AdaptationConfig):
    """The configured policy, except that a LoRA adapter's output (x A) B is recomputed from the small x A: a
    policy that keeps matmul outputs would otherwise keep it beside x W, as much memory again per adapted
    projection. (Adapter products are the matmuls that contract over exactly lora_rank.)"""
    policy, rank = REMAT_POLICIES[run.remat], adaptation.lora_rank
    if not rank or policy is None:
        return policy

    def policy_with_adapters(prim, *args, **params):
        if prim is lax.dot_general_p:
            (contracting, _), _ = params["dimension_numbers"]
            if [args[0].shape[d] for d in contracting] == [rank]:
                return False
        return policy(prim, *args, **params)

    return policy_with_adapters


class Transformer(nn.Module):
    config: ModelConfig  # what the model is
    execution: ExecutionConfig = ExecutionConfig()  # how it runs
    adaptation: AdaptationConfig = AdaptationConfig()  # how training adapts it

    def setup(self):
        cfg, run = self.config, self.execution
        self.adaptation.check(cfg)
        self.embed = nn.Embed(
            cfg.vocab_size, cfg.d_model,
            dtype=run.dtype, param_dtype=cfg.param_dtype,
            embedding_init=_param(_INIT, ("vocab", "embed")),
        )
        self.pos_embed = cfg.position.embedding(cfg, run.dtype)
        if cfg.type_vocab_size:  # BERT's token types; every token is of type 0
            self.type_embed = nn.Embed(cfg.type_vocab_size, cfg.d_model, dtype=run.dtype,
                                       param_dtype=cfg.param_dtype,
                                       embedding_init=_param(_INIT, (None, "embed")))
        if cfg.family in EMBED_NORM_FAMILIES:
            self.embed_norm = Norm(cfg, run.dtype)
        block = Block
        if run.remat != "none":
            block = nn.remat(Block, policy=_remat_policy(run, self.adaptation), prevent_cse=False)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            # layer index (decoding), is_full, is_first: one slice per layer
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, 0, 0),
            length=cfg.n_layers,
            unroll=min(run.scan_unroll, cfg.n_layers),
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, run, self.adaptation)
        if cfg.family not in POST_NORM_FAMILIES:
            self.final_norm = Norm(cfg, run.dtype)
        if cfg.output_head == "mlm":
            self.mlm_head = MlmHead(cfg, run)
            self.output_bias = self.param("output_bias", _param(nn.initializers.zeros, ("vocab",)),
                                          (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
        if not cfg.tied and cfg.output_head != "none":
            self.lm_head = _dense(cfg, run, AdaptationConfig(), cfg.vocab_size, -1, ("embed", "vocab"), False,
                                  None)

    def __call__(self, tokens, positions=None, segment_ids=None, return_hidden: bool = False,
                 cache: KVCache | None = None):
        """tokens [B, L] int -> float32 logits [B, L, V]; with `return_hidden`, the hidden states [B, L, D]
        that the output projection reads instead (after the final norm, and after a masked-LM head's
        dense + GELU + norm), for losses that never materialise all logits (see `logits_from_hidden`). A bare
        encoder (head 'none') has no logits: it always returns its last hidden state. With a `cache`, returns
        (output, updated cache); positions then default to the slots they fill."""
        cfg = self.config
        if tokens.ndim != 2 or not tokens.shape[1] or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise InputError(f"tokens must be integer ids of shape [batch, length] with length >= 1, got "
                             f"{tokens.dtype} {tuple(tokens.shape)}; add a batch axis with tokens[None]")
        batch, length = tokens.shape
        if positions is None and cache is not None:
            positions = jnp.broadcast_to(cache.length + jnp.arange(length, dtype=jnp.int32), (batch, length))
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
            limit = cfg.position.max_positions(cfg)
            if limit is not None and length > limit:
                raise InputError(
                    f"sequence of {length} tokens is longer than {cfg.position.limit_description(cfg)}; "
                    "grow it with ctxjax.positions.extend(params, new_len) and set max_seq_len=new_len"
                )
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        positions = positions.astype(jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)

        x = self.embed(tokens)  # [B, L, D]
        if cfg.family == "gemma":  # sqrt(d) rounded to the weights' dtype, as Gemma's embedding applies it
            x = x * jnp.asarray(cfg.d_model ** 0.5, cfg.param_dtype).astype(x.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        if cfg.type_vocab_size:
            x = x + self.type_embed(jnp.zeros((1, 1), jnp.int32))  # type 0 everywhere
        if cfg.family in EMBED_NORM_FAMILIES:
            x = self.embed_norm(x)
        x = _constrain(x, ("batch", "length", "embed"))
        is_full = None if cfg.layer_is_full is None else jnp.asarray(cfg.layer_is_full)
        is_first = jnp.arange(cfg.n_layers) == 0 if cfg.family == "modernbert" else None
        if cache is None:
            x, _ = self.layers(x, positions, segment_ids, None, None, is_full, is_first)
        else:
            slot_positions = lax.dynamic_update_slice_in_dim(cache.positions, positions, cache.length, axis=1)
            slot_segments = lax.dynamic_update_slice_in_dim(cache.segment_ids, segment_ids, cache.length,
                                                            axis=1)
            (x, (k, v)), _ = self.layers((x, (cache.k, cache.v)), positions, segment_ids,
                                         (slot_positions, slot_segments, cache.length),
                                         jnp.arange(cfg.n_layers), is_full, is_first)
            cache = KVCache(k, v, slot_positions, slot_segments, cache.length + length)
        if cfg.family not in POST_NORM_FAMILIES:
            x = self.final_norm(x)
        if cfg.output_head == "mlm":
            x = self.mlm_head(x)
        out = x if return_hidden or cfg.output_head == "none" else self.logits_from_hidden(x)
        return out if cache is None else (out, cache)

    def logits_from_hidden(self, x):
        """Hidden states [..., D] (what `return_hidden` gives) -> float32 logits [..., V] (tied: x @ embed^T;
        else lm_head; plus the masked-LM decoder's bias)."""
        cfg = self.config
        if cfg.output_head == "none":
            raise InputError("a bare encoder (head='none') has no logits: its output is the last hidden "
                             "state; import the masked-LM checkpoint (head='mlm') for token predictions")
        if cfg.tied:
            logits = self.embed.attend(x.astype(self.execution.dtype))
        else:
            logits = self.lm_head(x)
        if cfg.output_head == "mlm":
            logits = logits + self.output_bias.astype(logits.dtype)
        logits = soft_cap(logits.astype(jnp.float32), cfg.final_logit_softcapping)
        # [B, L, D] in training; [B, D] when generation asks for the last position only.
        return _constrain(logits, ("batch", "length")[:logits.ndim - 1] + ("vocab",))


class MlmHead(nn.Module):
    """BERT's masked-LM transform before the decoder: norm(act(dense(x))) (ModernBERT's without biases)."""

    cfg: ModelConfig
    run: ExecutionConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        h = _dense(cfg, self.run, AdaptationConfig(), cfg.d_model, -1, ("embed", None),
                   cfg.use_mlp_bias, "dense")(x)  # [B, L, D]
        return Norm(cfg, self.run.dtype, name="norm")(ACTIVATIONS[cfg.family](h))


def soft_cap(logits, cap: float):
    """Gemma 2's cap * tanh(logits / cap), smooth and bounded by the cap; unchanged for cap 0."""
    return cap * jnp.tanh(logits / cap) if cap else logits


def init_params(cfg: ModelConfig, rng, seq_len: int = 8, adaptation: AdaptationConfig = AdaptationConfig()):
    """Unboxed float parameters of a fresh model (logical-axis metadata stripped), with the adapters that
    `adaptation` asks for."""
    tokens = jnp.zeros((1, min(seq_len, cfg.max_seq_len)), jnp.int32)
    # Unboxed inside jit: under a mesh the boxes' sharding constraints only make sense in a trace.
    model = Transformer(cfg, adaptation=adaptation)
    return jax.jit(lambda r: nn.meta.unbox(model.init(r, tokens)["params"]))(rng)


def param_logical_axes(cfg: ModelConfig, adaptation: AdaptationConfig = AdaptationConfig()):
    """A pytree like the params whose leaves are PartitionSpecs of logical axis names."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    abstract = jax.eval_shape(
        lambda: Transformer(cfg, adaptation=adaptation).init(jax.random.PRNGKey(0), tokens))
    return nn.get_partition_spec(abstract)["params"]
