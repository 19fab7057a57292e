"""GPT-2-style learned positions grown 1024 -> 4096: the position table is interpolated to 4096 rows at the
stage boundary (a plain max_length=4096 on GPT-2 indexes past its 1024-row table and fails).

    ctxjax import-hf path/to/gpt2 --workdir runs/gpt2-4k      # or --config.init_from_hf=path/to/gpt2
    python train.py --config configs/gpt2_extend.py --workdir runs/gpt2-4k --config.data.source='tfds:pg19'

Stage 0 re-adapts at the original 1024 tokens; stage 1 trains at 4096 on documents long enough to fill a row.
"""

from ctxjax.train.defaults import default_config, use_tiny_run_settings


def get_config(variant=None):
    c = default_config()
    c.model.update(family="gpt2", vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_kv_heads=None,
                   max_seq_len=1024, tie_embeddings=None)
    c.model.position = {"name": "learned"}
    c.learned_extend_method = "interpolate"
    c.data.update(min_doc_tokens=1025, mode="crop")
    c.tokens_per_step = 32768
    c.micro_batch_size = 2
    c.execution.remat = "dots_no_batch"
    c.stages = [
        dict(steps=200, seq_len=1024, lr=1e-4, warmup_steps=20),
        dict(steps=1000, seq_len=4096, lr=1e-4, warmup_steps=50),
    ]
    c.export_dir = "hf"
    if variant == "tiny":
        use_tiny_run_settings(c)
        c.model.update(d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
        c.data.mode = "pack"
        c.tokens_per_step = 1024
        c.stages = [dict(steps=2, seq_len=32, lr=1e-3), dict(steps=2, seq_len=128, lr=1e-3)]
    elif variant:
        raise ValueError(f"configs/gpt2_extend.py has variants '' and 'tiny', not {variant!r}")
    return c
