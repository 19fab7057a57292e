"""Is the data pipeline ever the bottleneck? Tokens/s of the pipeline alone vs. a demo model's train step.

    python bench/data.py [--workdir DIR] [--batch 8] [--seq-len 256]

Pipeline: packing the embedded stdlib corpus with a trained SentencePiece tokenizer (vocabulary 4096),
measured on the consumer's thread with prefetching off, so the figure is the cost of producing batches.
"cached" reads tokens tokenized once (WORKDIR/token_cache, as training does after its first start);
"uncached" tokenizes each document when the stream reaches it. Train step: forward + backward
(jax.value_and_grad of the weighted cross-entropy) of a Llama-style model, d_model 256, 4 layers,
4 heads, vocabulary 4096. The target: pipeline tokens/s >= 20x train-step tokens/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctxjax.data import make_pipeline  # noqa: E402

TARGET_RATIO = 20


def pipeline_tokens_per_second(pipe, batch: int, seq_len: int, seconds: float = 3.0) -> float:
    pipe.next_batch(batch, seq_len)  # first batch: warm caches
    produced, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        produced += pipe.next_batch(batch, seq_len)["tokens"].size
    return produced / (time.perf_counter() - start)


def train_step_tokens_per_second(batch_arrays: dict, vocab_size: int, steps: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    from ctxjax import ModelConfig, Transformer

    config = ModelConfig(vocab_size=vocab_size, d_model=256, n_layers=4, n_heads=4, family="llama")
    model = Transformer(config)
    batch = {k: jnp.asarray(v) for k, v in batch_arrays.items()}
    params = model.init(jax.random.PRNGKey(0), batch["tokens"])["params"]

    def loss_fn(params):
        logits = model.apply({"params": params}, batch["tokens"], positions=batch["positions"],
                             segment_ids=batch["segment_ids"])
        log_probs = jax.nn.log_softmax(logits)
        token_loss = -jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
        return jnp.sum(token_loss * batch["weights"]) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)

    step = jax.jit(jax.value_and_grad(loss_fn))
    jax.block_until_ready(step(params))  # compile
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(step(params))
        times.append(time.perf_counter() - start)
    return batch["tokens"].size / float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/ctxjax-bench-data")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()

    config = dict(source="stdlib", vocab_size=args.vocab, prefetch=0)
    start = time.perf_counter()
    cached = make_pipeline(config, args.workdir, process_index=0, process_count=1)
    print(f"set-up (tokenizer + token cache, instant once cached): {time.perf_counter() - start:.1f} s, "
          f"{cached.stats()['documents']} documents, vocabulary {cached.tokenizer.vocab_size}")
    cached_rate = pipeline_tokens_per_second(cached, args.batch, args.seq_len)
    uncached = make_pipeline(config, args.workdir, process_index=0, process_count=1, precompute_tokens=False)
    uncached_rate = pipeline_tokens_per_second(uncached, args.batch, args.seq_len)
    train_rate = train_step_tokens_per_second(cached.next_batch(args.batch, args.seq_len), args.vocab)

    for name, rate in (("cached tokens", cached_rate), ("tokenizing on read", uncached_rate)):
        print(f"pipeline, {name + ':':20s}{rate:14,.0f} tokens/s  ({rate / train_rate:,.0f}x the step)")
    print(f"train step (fwd+bwd, {args.batch}x{args.seq_len}): {train_rate:10,.0f} tokens/s")
    ok = min(cached_rate, uncached_rate) >= TARGET_RATIO * train_rate
    print(f"{'OK' if ok else 'TOO SLOW'}: the pipeline must be >= {TARGET_RATIO}x the train step")


if __name__ == "__main__":
    main()
