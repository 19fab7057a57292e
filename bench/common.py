"""What the side-by-side benches against transformers share: one Llama in a Hugging Face directory that both
sides load (the same weights: a real checkpoint given with --hf, or a random one of a named shape written
once per run), and each measurement in its own process (so peaks and thread pools never mix)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# transformers' LlamaConfig fields. smollm: SmolLM-135M's shape (the model of issue 20's generation numbers);
# medium: bench/train_step.py's 155M model; tiny: for the suite's end-to-end run of each script.
SHAPES = {
    "tiny": dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128),
    "smollm": dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                   num_key_value_heads=3, intermediate_size=1536, tie_word_embeddings=True,
                   rope_theta=10000.0),
    "medium": dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
                   num_key_value_heads=4, intermediate_size=2816),
}


def random_llama(shape: str, max_positions: int, out_dir: str) -> str:
    """A randomly initialised (seed 0) float32 Llama of SHAPES[shape], saved as a Hugging Face directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=max_positions)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


def model_dir(args, max_positions: int, scratch: str) -> str:
    """--hf DIR, else a random Llama of --model's shape in `scratch`."""
    return args.hf or random_llama(args.model, max_positions, os.path.join(scratch, f"llama-{args.model}"))


def run_child(script: str, args: list[str]) -> dict:
    """Run `script --child ...` in a fresh process; its last stdout line is a JSON object."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                         env={**os.environ,
                              "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
    if out.returncode != 0:
        raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(result: dict) -> None:
    """A child's result, with its peak RSS, as the last line of its output."""
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB
    print(json.dumps(result), flush=True)


def timed(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of fn() (fn waits for its own results)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def load_ctxjax(hf_dir: str):
    """(ModelConfig, params on the default device) of `hf_dir`, float32."""
    import jax

    sys.path.insert(0, REPO)
    from ctxjax.hf import load_pretrained

    cfg, params = load_pretrained(hf_dir, param_dtype="float32")
    return cfg, jax.device_put(params)


def load_torch(hf_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def random_tokens(vocab_size: int, shape: tuple[int, ...], seed: int = 0):
    """The same int32 tokens in every process (ids from 3 up: clear of the usual special ids)."""
    import numpy as np

    return np.random.RandomState(seed).randint(3, vocab_size, shape).astype(np.int32)
