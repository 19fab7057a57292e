"""KV-cache generation: cached decoding equals recomputation, greedy tokens (and logits) equal transformers'
`generate` for every rope type, sampling and stop tokens behave, bad input fails in one line."""

import hf_oracle as oracle
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import run_model
import torch
from test_model import SCHEMES

from ctxjax import ModelConfig, init_params, positions
from ctxjax.execution import ExecutionConfig
from ctxjax.generate import Sampling, generate, left_pad, sample_next
from ctxjax.hf import architecture_of, load_pretrained, rereads_on_rope_switch

RNG = np.random.RandomState(0)
PROMPTS = [RNG.randint(0, 61, n).tolist() for n in (9, 3, 14)]  # different lengths: left padding in play


def tiny(position):
    return ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                       position=position)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_cached_decoding_gives_the_logits_of_recomputing_the_whole_sequence(name):
    cfg = tiny(SCHEMES[name])
    params = init_params(cfg, jax.random.PRNGKey(0))
    out = generate(cfg, params, PROMPTS, 6, return_logits=True, pad_to_multiple=8)
    for row, (prompt, new) in enumerate(zip(PROMPTS, out.sequences)):
        assert len(new) == 6
        full = np.asarray(run_model.forward(cfg, params, jnp.asarray([prompt + new])))[0]
        # Logits that chose new token i are the full pass's logits at the position before it.
        recomputed = full[len(prompt) - 1:len(prompt) - 1 + 6]
        np.testing.assert_allclose(out.logits[row], recomputed, atol=2e-5, err_msg=f"{name} row {row}")


def test_unrolled_layers_decode_the_same():
    cfg = tiny(positions.Rope())
    params = init_params(cfg, jax.random.PRNGKey(0))
    rolled = generate(cfg, params, PROMPTS, 4, return_logits=True)
    unrolled = generate(cfg, params, PROMPTS, 4, return_logits=True,
                        execution=ExecutionConfig(attention="auto", scan_unroll=2))
    assert unrolled.sequences == rolled.sequences
    np.testing.assert_allclose(np.asarray(unrolled.logits), np.asarray(rolled.logits), atol=1e-5)


def _hf_generate(model, prompts, max_new_tokens):
    """transformers' greedy generate on the same left-padded batch: (new tokens, logits per step)."""
    model.generation_config.eos_token_id = None  # run all steps, as ctxjax does without stop tokens
    tokens, _, segment_ids = left_pad(prompts)
    out = model.generate(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(segment_ids),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, output_logits=True,
                         return_dict_in_generate=True)
    new = out.sequences[:, tokens.shape[1]:].tolist()
    return new, torch.stack(out.logits, dim=1).float().numpy()


# Prompt lengths chosen so that decoding crosses the thresholds of the sequence-dependent types: 58 + 12
# tokens pass max_position_embeddings (64, dynamic NTK); prompts of 10 and 6 + 12 tokens pass L0 = 16
# (longrope).
CROSSING = {"long": (58, 30, 5), "short": (10, 6)}


@pytest.mark.parametrize("case", sorted(oracle.ROPE_CASES))
def test_greedy_tokens_and_logits_equal_transformers_generate(case):
    model = oracle.llama(oracle.ROPE_CASES[case])
    cfg, params = load_pretrained(oracle.save(model))
    rng = np.random.RandomState(1)
    for lengths in CROSSING.values():
        prompts = [rng.randint(3, 97, n).tolist() for n in lengths]
        ours = generate(cfg, params, prompts, 12, return_logits=True, pad_to_multiple=8)
        fresh = oracle.llama(oracle.ROPE_CASES[case])  # HF's dynamic rope keeps state between calls
        theirs, their_logits = _hf_generate(fresh, prompts, 12)
        assert ours.sequences == theirs, case
        np.testing.assert_allclose(ours.logits, their_logits, atol=1e-4, err_msg=case)


def test_phi3_rereads_the_sequence_once_it_passes_l0_as_transformers_phi3_does():
    """Unlike Llama, transformers' Phi-3 drops the cache when the sequence first grows past L0 and reads it
    again, so every key gets the long LongRoPE factors; mixing rotations (as Llama does, and generate by
    default) would give other logits."""
    src = oracle.save(oracle.phi3())
    assert rereads_on_rope_switch(architecture_of(src)) and not rereads_on_rope_switch("LlamaForCausalLM")
    cfg, params = load_pretrained(src)
    rng = np.random.RandomState(1)
    for lengths in CROSSING.values():
        prompts = [rng.randint(3, 97, n).tolist() for n in lengths]
        ours = generate(cfg, params, prompts, 12, return_logits=True, pad_to_multiple=8,
                        reread_on_switch=True)
        theirs, their_logits = _hf_generate(oracle.phi3(), prompts, 12)
        assert ours.sequences == theirs
        np.testing.assert_allclose(ours.logits, their_logits, atol=1e-4)
    mixed = generate(cfg, params, prompts, 12, return_logits=True, pad_to_multiple=8)
    assert np.abs(mixed.logits - their_logits).max() > 1e-3


def test_greedy_tokens_and_logits_equal_transformers_generate_for_a_sliding_window():
    from transformers import MistralConfig, MistralForCausalLM

    def mistral():
        torch.manual_seed(3)
        return MistralForCausalLM(MistralConfig(**oracle.LLAMA, sliding_window=5)).eval()

    cfg, params = load_pretrained(oracle.save(mistral()))
    assert cfg.sliding_window == 5
    prompts = [np.random.RandomState(4).randint(3, 97, n).tolist() for n in (11, 4)]
    ours = generate(cfg, params, prompts, 10, return_logits=True, pad_to_multiple=8)
    theirs, their_logits = _hf_generate(mistral(), prompts, 10)
    assert ours.sequences == theirs
    np.testing.assert_allclose(ours.logits, their_logits, atol=1e-4)


def test_greedy_tokens_and_logits_equal_transformers_generate_for_qwen3():
    """Qwen3 normalises keys before they are rotated and cached."""
    cfg, params = load_pretrained(oracle.save(oracle.qwen3(oracle.ROPE_CASES["yarn"])))
    prompts = [np.random.RandomState(5).randint(3, 97, n).tolist() for n in (10, 6)]
    ours = generate(cfg, params, prompts, 12, return_logits=True, pad_to_multiple=8)
    theirs, their_logits = _hf_generate(oracle.qwen3(oracle.ROPE_CASES["yarn"]), prompts, 12)
    assert ours.sequences == theirs
    np.testing.assert_allclose(ours.logits, their_logits, atol=1e-4)


@pytest.mark.parametrize("arch", ["gemma3", "gemma2"])
def test_greedy_tokens_and_logits_equal_transformers_generate_for_gemma(arch):
    """Gemma's cache holds local layers (window 8; Gemma 3: base 1e4) beside a global one: 22 + 12 tokens pass
    both; Gemma 2 also caps scores and logits."""
    make = getattr(oracle, arch)
    cfg, params = load_pretrained(oracle.save(make()))
    prompts = [np.random.RandomState(6).randint(3, 97, n).tolist() for n in (22, 5)]
    ours = generate(cfg, params, prompts, 12, return_logits=True, pad_to_multiple=8)
    theirs, their_logits = _hf_generate(make(), prompts, 12)
    assert ours.sequences == theirs
    np.testing.assert_allclose(ours.logits, their_logits, atol=1e-4)


def test_greedy_tokens_equal_transformers_generate_for_gpt2():
    model = oracle.gpt2()
    cfg, params = load_pretrained(oracle.save(model))
    prompts = [np.random.RandomState(2).randint(1, 97, n).tolist() for n in (20, 7)]
    ours = generate(cfg, params, prompts, 10, pad_to_multiple=8)
    assert ours.sequences == _hf_generate(oracle.gpt2(), prompts, 10)[0]


@pytest.mark.parametrize("case", ["dynamic", "longrope"])
def test_sequence_dependent_rope_cached_differs_from_recomputed_only_after_the_threshold(case):
    """Documented behaviour (docs/evaluation.md): keys keep the rotation of the call that cached them, as in
    transformers, so cached decoding equals recomputation until the sequence crosses the scheme's threshold
    and differs after it. (The test above shows it still equals transformers' cached decoding.)"""
    model = oracle.llama(oracle.ROPE_CASES[case])
    cfg, params = load_pretrained(oracle.save(model))
    threshold = 64 if case == "dynamic" else oracle.L0  # dynamic: HF's max_position_embeddings
    prompt = np.random.RandomState(3).randint(3, 97, threshold - 4).tolist()
    out = generate(cfg, params, [prompt], 10, return_logits=True, pad_to_multiple=8)
    sequence = prompt + out.sequences[0]
    width = len(sequence)
    diff = []
    for step in range(10):
        # Recompute the sequence as it stood at this step; right padding (segment 0, position 0) keeps one
        # shape and leaves max(position) + 1, which these schemes read, at the prefix's length.
        n = len(prompt) + step
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :n] = sequence[:n]
        pos = np.where(np.arange(width) < n, np.arange(width), 0)[None]
        seg = (np.arange(width) < n).astype(np.int32)[None]
        full = run_model.forward(cfg, params, jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg))
        full = np.asarray(full)
        diff.append(np.abs(out.logits[0, step] - full[0, n - 1]).max())
    # Step i sees a sequence of threshold - 4 + i tokens: beyond the threshold from step 5 on.
    assert max(diff[:5]) < 1e-5, diff
    assert min(diff[5:]) > 3e-5, diff  # small at a tiny random model, but far above rounding


def test_sampling_settings():
    logits = jnp.asarray(np.random.RandomState(4).randn(3, 50).astype(np.float32))
    rng = jax.random.PRNGKey(0)
    greedy = sample_next(logits, rng, Sampling())
    assert (greedy == jnp.argmax(logits, -1)).all()
    assert (sample_next(logits, rng, Sampling(temperature=1.0, top_k=1)) == greedy).all()
    assert (sample_next(logits, rng, Sampling(temperature=1.0, top_p=1e-6)) == greedy).all()
    hot_top5 = Sampling(temperature=2.0, top_k=5)
    draws = np.stack([np.asarray(sample_next(logits, jax.random.PRNGKey(i), hot_top5)) for i in range(200)])
    top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    assert all(set(draws[:, row]) <= set(top5[row]) for row in range(3))
    assert all(len(set(draws[:, row])) > 1 for row in range(3))
    # Nucleus: with top_p just above the best token's probability, exactly the two best remain.
    probs = np.asarray(jax.nn.softmax(logits[:1]))[0]
    best_two = set(np.argsort(-probs)[:2])
    p = float(np.sort(probs)[-1]) + 1e-3
    draws = {int(sample_next(logits[:1], jax.random.PRNGKey(i), Sampling(temperature=1.0, top_p=p))[0])
             for i in range(200)}
    assert draws == best_two


def test_seeded_sampling_is_reproducible_and_stop_tokens_end_rows():
    cfg = tiny(positions.Rope())
    params = init_params(cfg, jax.random.PRNGKey(0))
    hot = Sampling(temperature=1.5)
    a = generate(cfg, params, PROMPTS, 8, sampling=hot, seed=1)
    assert a.sequences == generate(cfg, params, PROMPTS, 8, sampling=hot, seed=1).sequences
    assert a.sequences != generate(cfg, params, PROMPTS, 8, sampling=hot, seed=2).sequences
    greedy = generate(cfg, params, PROMPTS, 8)
    stop = greedy.sequences[0][3]
    stopped = generate(cfg, params, PROMPTS, 8, stop_tokens=(stop,))
    for full, cut, ended in zip(greedy.sequences, stopped.sequences, stopped.stopped):
        expect = full[:full.index(stop)] if stop in full else full
        assert cut == expect and ended == (stop in full)


@pytest.mark.parametrize("call, message", [
    (lambda cfg, p: generate(cfg, p, [[]], 4), "at least one token"),
    (lambda cfg, p: generate(cfg, p, [[1, 2]], 0), "max_new_tokens"),
    (lambda cfg, p: generate(cfg, p, [[1, 2]], 4, stop_tokens=(999,)), "outside the model's vocabulary"),
    (lambda cfg, p: generate(cfg.replace(position=positions.Learned()), p, [[1] * 60], 8),
     "learned position"),
    (lambda cfg, p: Sampling(temperature=-1), "temperature"),
    (lambda cfg, p: Sampling(top_p=0), "top_p"),
    (lambda cfg, p: Sampling(top_k=2.5), "top_k=2.5 must be a number \\(an int\\)"),
    (lambda cfg, p: generate(cfg, p, [[1, 61]], 4), "prompt token id 61 is outside the model's vocabulary"),
    (lambda cfg, p: generate(cfg, p, [1, 2, 3], 4), "wrap a single prompt as \\[prompt\\]"),
    (lambda cfg, p: generate(cfg, p, [], 4), "non-empty list of prompts"),
    (lambda cfg, p: generate(cfg, p, [[1, 2]], 3.0), "max_new_tokens=3.0 must be an int"),
])
def test_bad_generation_input_is_a_one_line_error(call, message):
    cfg = tiny(positions.Rope())
    with pytest.raises(ValueError, match=message) as error:
        call(cfg, {})
    assert "\n" not in str(error.value)
