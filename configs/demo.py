"""The demo: a small Llama-style model trained from scratch on the embedded corpus (the Python standard
library's source) at 128 tokens, then grown to 256 and 512 tokens with YaRN at the stage boundaries,
exported to a Hugging Face directory. About 2 minutes of training on 2 CPU cores; `make demo` then evaluates
it (about 3 minutes in all).

    python train.py --config configs/demo.py --workdir runs/demo
    python train.py --config configs/demo.py:tiny --workdir /tmp/demo-tiny     # seconds, for tests
"""

from ctxjax.train.defaults import default_config, use_tiny_run_settings


def get_config(variant=None):
    c = default_config()
    # On a CPU: four shallow layers train ~15-20% faster unrolled, and `auto` attention switches from xla to
    # blockwise for the 512-token stage, where that is faster (docs/benchmarks.md).
    c.model.update(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=128)
    c.execution.update(scan_unroll=4, attention="auto")
    c.data.update(source="stdlib", vocab_size=2048, mode="pack")
    c.rope_scaling = "yarn"  # stages past 128 tokens get YaRN with factor seq_len / 128
    c.tokens_per_step = 4096
    c.stages = [
        dict(steps=150, seq_len=128, lr=3e-3, warmup_steps=15),
        dict(steps=25, seq_len=256, lr=1e-3, warmup_steps=3),
        dict(steps=25, seq_len=512, lr=1e-3, warmup_steps=3),
    ]
    c.log_every = 10
    c.checkpoint.every_steps = 100
    c.export_dir = "hf"
    if variant == "tiny":
        use_tiny_run_settings(c)
        c.model.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
        c.tokens_per_step = 512  # 32/16/8 rows: divisible by the 8 simulated devices of the tests
        c.stages = [dict(steps=3, seq_len=16, lr=3e-3, warmup_steps=1), dict(steps=2, seq_len=32, lr=1e-3),
                    dict(steps=2, seq_len=64, lr=1e-3)]
    elif variant:
        raise ValueError(f"configs/demo.py has variants '' and 'tiny', not {variant!r}")
    return c
