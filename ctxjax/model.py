"""The ctxjax decoder: embed -> n_layers x (attention, MLP) -> norm -> logits, one pure flax.linen module.

    model = Transformer(cfg)
    params = model.init(rng, tokens)["params"]
    logits = model.apply({"params": params}, tokens, positions=None, segment_ids=None)  # float32 [B, L, V]

Layers are stacked with `nn.scan` (compile time does not grow with depth; every layer parameter has a
leading `layers` axis) and optionally rematerialised (`ModelConfig.remat`). Parameters and activations
carry logical axis names (batch, length, embed, heads, kv_heads, head_dim, mlp, vocab, layers); a table
in the training config maps them to mesh axes, so nothing here names a device axis.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxjax import attention as attention_lib
from ctxjax.config import ModelConfig

REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute the cheap rest
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls only
}

_INIT = nn.initializers.normal(stddev=0.02)


def _param(init, axes):
    return nn.with_logical_partitioning(init, axes)


def _constrain(x, axes):
    return nn.with_logical_constraint(x, axes)


class Norm(nn.Module):
    """RMSNorm (llama) or LayerNorm (gpt2), normalised in float32 and cast back before the scale, as HF does."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        d = x.shape[-1]
        h = x.astype(jnp.float32)
        if cfg.family == "gpt2":
            h = h - jnp.mean(h, axis=-1, keepdims=True)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + cfg.eps)
        scale = self.param("scale", _param(nn.initializers.ones, ("embed",)), (d,), jnp.dtype(cfg.param_dtype))
        h = h.astype(cfg.dtype) * scale.astype(cfg.dtype)
        if cfg.family == "gpt2":
            bias = self.param("bias", _param(nn.initializers.zeros, ("embed",)), (d,), jnp.dtype(cfg.param_dtype))
            h = h + bias.astype(cfg.dtype)
        return h


def _dense(cfg: ModelConfig, features, axis, kernel_axes, use_bias, name):
    out_axes = kernel_axes[len(kernel_axes) - (len(features) if isinstance(features, tuple) else 1):]
    return nn.DenseGeneral(
        features,
        axis=axis,
        use_bias=use_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_param(_INIT, kernel_axes),
        bias_init=_param(nn.initializers.zeros, out_axes),
        name=name,
    )


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids):
        cfg = self.cfg
        h, g, dh = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        q = _dense(cfg, (h, dh), -1, ("embed", "heads", "head_dim"), cfg.use_qkv_bias, "q")(x)
        k = _dense(cfg, (g, dh), -1, ("embed", "kv_heads", "head_dim"), cfg.use_qkv_bias, "k")(x)
        v = _dense(cfg, (g, dh), -1, ("embed", "kv_heads", "head_dim"), cfg.use_qkv_bias, "v")(x)
        q, k = cfg.position.rotate(q, k, positions)
        q = _constrain(q, ("batch", "length", "heads", "head_dim"))
        k = _constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = _constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        kernel = attention_lib.get_kernel(cfg.attention)
        out = kernel(
            q, k, v,
            q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
            q_positions=positions, kv_positions=positions,
            scale=dh**-0.5, alibi_slopes=cfg.position.alibi_slopes(h),
        )
        out = _constrain(out, ("batch", "length", "heads", "head_dim"))
        return _dense(cfg, cfg.d_model, (-2, -1), ("heads", "head_dim", "embed"), cfg.use_o_bias, "o")(out)


class Mlp(nn.Module):
    """SwiGLU (llama: down(silu(gate x) * up x)) or tanh-GELU (gpt2: down(gelu(up x)))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        up = _dense(cfg, cfg.mlp_dim, -1, ("embed", "mlp"), cfg.use_mlp_bias, "up")(x)
        if cfg.family == "gpt2":
            h = jax.nn.gelu(up, approximate=True)
        else:
            gate = _dense(cfg, cfg.mlp_dim, -1, ("embed", "mlp"), cfg.use_mlp_bias, "gate")(x)
            h = jax.nn.silu(gate) * up
        h = _constrain(h, ("batch", "length", "mlp"))
        return _dense(cfg, cfg.d_model, -1, ("mlp", "embed"), cfg.use_mlp_bias, "down")(h)


class Block(nn.Module):
    """Pre-norm residual block; shaped (carry, _) -> (carry, None) for nn.scan."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids):
        x = x + Attention(self.cfg, name="attn")(Norm(self.cfg, name="attn_norm")(x), positions, segment_ids)
        x = x + Mlp(self.cfg, name="mlp")(Norm(self.cfg, name="mlp_norm")(x))
        return _constrain(x, ("batch", "length", "embed")), None


class Transformer(nn.Module):
    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(
            cfg.vocab_size, cfg.d_model,
            dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            embedding_init=_param(_INIT, ("vocab", "embed")),
        )
        self.pos_embed = cfg.position.embedding(cfg)
        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=cfg.n_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg)
        self.final_norm = Norm(cfg)
        if not cfg.tied:
            self.lm_head = _dense(cfg, cfg.vocab_size, -1, ("embed", "vocab"), False, None)

    def __call__(self, tokens, positions=None, segment_ids=None, return_hidden: bool = False):
        """tokens [B, L] int -> float32 logits [B, L, V]; with `return_hidden`, the final normalised hidden
        states [B, L, D] instead, for losses that never materialise all logits (see `logits_from_hidden`)."""
        cfg = self.config
        batch, length = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
            if cfg.position.name == "learned" and length > cfg.max_seq_len:
                raise ValueError(
                    f"sequence of {length} tokens is longer than the learned position table ({cfg.max_seq_len}); "
                    "grow it with ctxjax.positions.extend(params, new_len) and set max_seq_len=new_len"
                )
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        positions = positions.astype(jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)

        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        x = _constrain(x, ("batch", "length", "embed"))
        x, _ = self.layers(x, positions, segment_ids)
        x = self.final_norm(x)
        if return_hidden:
            return x
        return self.logits_from_hidden(x)

    def logits_from_hidden(self, x):
        """Final hidden states [..., D] -> float32 logits [..., V] (tied: x @ embed^T; else lm_head)."""
        if self.config.tied:
            logits = self.embed.attend(x.astype(self.config.dtype))
        else:
            logits = self.lm_head(x)
        return _constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))


MODEL_AXES = ("batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers")


def init_params(cfg: ModelConfig, rng, seq_len: int = 8):
    """Unboxed float parameters of a fresh model (logical-axis metadata stripped)."""
    tokens = jnp.zeros((1, min(seq_len, cfg.max_seq_len)), jnp.int32)
    return nn.meta.unbox(jax.jit(Transformer(cfg).init)(rng, tokens)["params"])


def param_logical_axes(cfg: ModelConfig):
    """A pytree like the params whose leaves are PartitionSpecs of logical axis names."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    abstract = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.PRNGKey(0), tokens))
    return nn.get_partition_spec(abstract)["params"]
