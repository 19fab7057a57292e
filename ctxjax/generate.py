"""Text generation with a KV cache: one compiled prefill, then one compiled loop of single-token steps.

    out = generate(cfg, params, [prompt_ids, ...], max_new_tokens=32,
                   sampling=Sampling(temperature=0.8, top_p=0.9), stop_tokens=(tokenizer.eos_id,))
    out.sequences  # the new tokens of each prompt, stop token excluded

Prompts of different lengths are left-padded to a common length (rounded up to `pad_to_multiple`, so nearby
lengths share one compilation). Padding has segment id 0 and is invisible to every query; each row's real
tokens take positions 0, 1, ... and every decode step continues from the row's own last position, so every
positional scheme sees exactly the positions of an unpadded sequence. The step loop is a `lax.while_loop`
with fixed shapes: no recompilation per token, and it ends early once every row has stopped.

Sequence-dependent RoPE (dynamic NTK, LongRoPE) computes its frequencies from the positions of each call,
like transformers' `generate`: keys cached by earlier calls keep the rotation they were written with, so
once a sequence crosses the scheme's threshold, cached decoding differs from recomputing the whole sequence
(the recomputation rotates every key with the final length's frequencies). Greedy decoding still equals
`transformers.generate` token for token, because transformers caches the same way; see docs/evaluation.md.
Models that export as transformers' Phi-3 class are the exception, there as here: when the sequence first
passes LongRoPE's L0, the cache is dropped and the whole sequence read again with the long factors.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ctxjax.config import ModelConfig
from ctxjax.errors import InputError
from ctxjax.execution import ExecutionConfig
from ctxjax.model import KVCache, Transformer, init_cache

# The decode step sees one query against the whole cache: the reference kernel's [1, S] score rows are
# linear in S, and it supports every layout, so steps always use it whatever the prefill kernel is.
STEP_KERNEL = "xla"


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 is greedy (argmax); otherwise the logits are divided by
    the temperature, cut to the `top_k` best (0: no cut) and to the smallest set whose probability reaches
    `top_p` (1.0: no cut), then sampled."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        for name, kind in (("temperature", (int, float)), ("top_k", int), ("top_p", (int, float))):
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise InputError(f"{name}={value!r} must be a number" + (" (an int)" if kind is int else ""))
        if self.temperature < 0:
            raise InputError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        if self.top_k < 0:
            raise InputError(f"top_k={self.top_k} must be >= 0 (0 means no top-k cut)")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p} must be in (0, 1] (1 means no nucleus cut)")


@dataclasses.dataclass
class Generation:
    sequences: list[list[int]]  # new tokens per prompt, up to (not including) the first stop token
    stopped: list[bool]  # whether each row ended on a stop token (else it reached max_new_tokens)
    # [B, max_new_tokens, V] float32 when requested; rows past a stop hold junk
    logits: np.ndarray | None = None


def sample_next(logits, rng, sampling: Sampling):
    """logits [B, V] float32 -> token ids [B] int32."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth_best = lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth_best, -jnp.inf, logits)
    if sampling.top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # A token stays if the tokens ranked above it hold less than top_p: the best one always stays.
        keep = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_to_multiple: int = 1):
    """(tokens, positions, segment_ids) [B, P] numpy int32: prompts right-aligned, padding with segment 0;
    P is the longest prompt rounded up to a multiple of `pad_to_multiple`."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("every prompt needs at least one token (start it with the tokenizer's BOS id)")
    longest = max(len(p) for p in prompts)
    width = -(-longest // pad_to_multiple) * pad_to_multiple
    tokens = np.zeros((len(prompts), width), np.int32)
    positions = np.zeros_like(tokens)
    segment_ids = np.zeros_like(tokens)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        tokens[row, width - n:] = prompt
        positions[row, width - n:] = np.arange(n)
        segment_ids[row, width - n:] = 1
    return tokens, positions, segment_ids


@functools.partial(jax.jit, static_argnames=("cfg", "run", "cache_len"))
def prefill(cfg: ModelConfig, run: ExecutionConfig, params, tokens, positions, segment_ids, cache_len: int):
    """Run the (left-padded) prompts through the model into a fresh cache of `cache_len` slots.
    Returns (logits of each row's last prompt token [B, V], cache)."""
    model = Transformer(cfg, run)
    cache = init_cache(cfg, tokens.shape[0], cache_len, run.dtype)
    hidden, cache = model.apply({"params": params}, tokens, positions, segment_ids, return_hidden=True,
                                cache=cache)  # [B, P, D]
    # Only the last slot's logits are needed: project one hidden state per row, not P of them.
    logits = model.apply({"params": params}, hidden[:, -1], method=Transformer.logits_from_hidden)  # [B, V]
    return logits, cache


def decode_step(cfg: ModelConfig, run: ExecutionConfig, params, tokens, positions, cache: KVCache):
    """One new token per row: tokens, positions [B] -> (logits [B, V], cache)."""
    logits, cache = Transformer(cfg, run.replace(attention=STEP_KERNEL)).apply(
        {"params": params}, tokens[:, None], positions[:, None], jnp.ones_like(tokens)[:, None], cache=cache)
    return logits[:, 0], cache


@functools.partial(jax.jit, static_argnames=("cfg", "run", "max_new_tokens", "sampling", "stop_tokens",
                                             "keep_logits", "on_token"))
def _decode(cfg, run, params, first_logits, cache, next_positions, rng, *, max_new_tokens: int,
            sampling: Sampling, stop_tokens: tuple[int, ...], keep_logits: bool, on_token=None):
    batch, vocab = first_logits.shape
    stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)

    def choose(i, logits, rng, state):
        tokens, logits_out, done = state
        token = sample_next(logits, jax.random.fold_in(rng, i), sampling)
        tokens = tokens.at[:, i].set(jnp.where(done, -1, token))
        if keep_logits:
            logits_out = logits_out.at[:, i].set(logits)
        return token, (tokens, logits_out, done | jnp.isin(token, stops))

    tokens = jnp.full((batch, max_new_tokens), -1, jnp.int32)
    logits_out = jnp.zeros((batch, max_new_tokens if keep_logits else 0, vocab), jnp.float32)
    token, state = choose(0, first_logits, rng, (tokens, logits_out, jnp.zeros((batch,), bool)))

    def not_finished(carry):
        i, _, _, _, (_, _, done) = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def step(carry):
        i, token, cache, positions, state = carry
        logits, cache = decode_step(cfg, run, params, token, positions, cache)
        token, state = choose(i, logits, rng, state)
        if on_token is not None:  # a host callback per step, compiled in only when progress is asked for
            jax.debug.callback(on_token, i + 1)
        return i + 1, token, cache, positions + 1, state

    carry = lax.while_loop(not_finished, step, (jnp.int32(1), token, cache, next_positions, state))
    tokens, logits_out, done = carry[-1]
    return tokens, logits_out, done


def _checked_prompts(prompts, vocab_size: int) -> list[list[int]]:
    """Prompts as lists of ints, or a one-line error (an id outside the vocabulary would give NaN logits)."""
    if isinstance(prompts, np.ndarray):
        prompts = prompts.tolist()
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InputError("prompts must be a non-empty list of prompts, each a list of token ids")
    if any(not isinstance(p, (list, tuple, np.ndarray)) for p in prompts):
        raise InputError("prompts must be a list of prompts, each a list of token ids: wrap a single prompt "
                         "as [prompt]")
    prompts = [[int(t) for t in p] for p in prompts]
    bad = [t for p in prompts for t in p if not 0 <= t < vocab_size]
    if bad:
        raise InputError(f"prompt token id {bad[0]} is outside the model's vocabulary (0..{vocab_size - 1}); "
                         "check that the tokenizer belongs to this model")
    return prompts


def _reread_step(cfg: ModelConfig, longest_prompt: int, max_new_tokens: int) -> int:
    """How many tokens to generate before dropping the cache and reading the whole sequence again (0: never):
    when the (padded) sequence first grows past the length at which the positional scheme changes how it
    rotates every key (LongRoPE: its long factors past L0), with fewer tokens cached than that."""
    switch = cfg.position.rotation_switch()
    if switch is None:
        return 0
    fed = switch + 1 - longest_prompt  # generated tokens fed when it happens
    return fed if 1 <= fed < max_new_tokens else 0


def check_can_generate(cfg: ModelConfig) -> None:
    if not cfg.causal:
        raise InputError("the model is an encoder (causal=False): it fills masked tokens from both sides and "
                         "does not generate text left to right; evaluate it with "
                         "`ctxjax eval --tasks encoder`")
    if cfg.output_head != "lm":  # a bare decoder (head="none") outputs hidden states, no logits
        raise InputError(f"a model with head={cfg.output_head!r} has no next-token head and does not "
                         "generate; only models with head='lm' do")


def generate(cfg: ModelConfig, params, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
             sampling: Sampling = Sampling(), stop_tokens: Sequence[int] = (), seed: int = 0,
             pad_to_multiple: int = 64, return_logits: bool = False, execution: ExecutionConfig | None = None,
             reread_on_switch: bool = False, on_token: Callable[[int], None] | None = None) -> Generation:
    """Continue each prompt (a list of token ids) by up to `max_new_tokens` tokens; see the module doc.

    execution: how the prefill runs (default: the `auto` kernel in float32; steps always use STEP_KERNEL).
    reread_on_switch: when the sequence first grows past the length where the positional scheme rotates every
    key anew (LongRoPE past L0), drop the cache and read the whole sequence again, as transformers' Phi-3 does
    (`ctxjax.hf.rereads_on_rope_switch` says which classes do); otherwise cached keys keep their rotation, as
    transformers' Llama does.
    on_token(n): called on the host as decoding goes, with the number of tokens generated so far (for a
    progress bar; it costs a host callback per step, so leave it None in loops that must not wait)."""
    run = execution or ExecutionConfig(attention="auto")
    check_can_generate(cfg)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens!r} must be an int >= 1")
    prompts = _checked_prompts(prompts, cfg.vocab_size)
    for token in stop_tokens:
        if not 0 <= int(token) < cfg.vocab_size:
            raise InputError(f"stop token {token} is outside the model's vocabulary "
                             f"(0..{cfg.vocab_size - 1})")
    rereads_at = _reread_step(cfg, max(len(p) for p in prompts), max_new_tokens) if reread_on_switch else 0
    if rereads_at:  # decode up to the crossing, then continue from the whole sequence read again
        kwargs = dict(sampling=sampling, stop_tokens=stop_tokens, pad_to_multiple=pad_to_multiple,
                      return_logits=return_logits, execution=run, reread_on_switch=True)
        head = generate(cfg, params, prompts, rereads_at, seed=seed, on_token=on_token, **kwargs)
        tail = generate(cfg, params, [p + s for p, s in zip(prompts, head.sequences)],
                        max_new_tokens - rereads_at, seed=seed + 1,
                        on_token=on_token and (lambda n: on_token(rereads_at + n)), **kwargs)
        # A row that stopped before the crossing is done; the continuation of its (shorter) sequence is
        # dropped.
        return Generation([s if stopped else s + t for s, t, stopped in zip(head.sequences, tail.sequences,
                                                                             head.stopped)],
                          [a or b for a, b in zip(head.stopped, tail.stopped)],
                          np.concatenate([head.logits, tail.logits], axis=1) if return_logits else None)
    tokens, positions, segment_ids = left_pad(prompts, pad_to_multiple)
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    longest = int(lengths.max()) + max_new_tokens
    limit = cfg.position.max_positions(cfg)
    if limit is not None and longest > limit:
        raise InputError(f"prompt + max_new_tokens reach position {longest - 1}, beyond "
                         f"{cfg.position.limit_description(cfg)}; shorten the prompt or extend the model")
    cache_len = tokens.shape[1] + max_new_tokens  # the last sampled token is never fed back, one slot spare
    first_logits, cache = prefill(cfg, run, params, tokens, positions, segment_ids, cache_len)
    new, logits, done = _decode(
        cfg, run, params, first_logits, cache, jnp.asarray(lengths), jax.random.PRNGKey(seed),
        max_new_tokens=int(max_new_tokens), sampling=sampling,
        stop_tokens=tuple(int(t) for t in stop_tokens), keep_logits=return_logits, on_token=on_token)
    new = np.asarray(new)
    sequences = []
    for row in new:
        row = row[row >= 0].tolist()
        cut = next((i for i, t in enumerate(row) if t in stop_tokens), len(row))
        sequences.append(row[:cut])
    return Generation(sequences, [bool(d) for d in np.asarray(done)],
                      np.asarray(logits) if return_logits else None)
