"""A ModernBERT-style RoPE encoder extended 8k -> 32k with masked-language modelling (issue 19): YaRN scaling
of factor 4 over the original 8192 positions, trained at 32768 on documents that fill a row, with ModernBERT's
objective (30% of tokens masked, 80/10/10 mask/random/keep).

    ctxjax import-hf path/to/modernbert --workdir runs/mbert-32k   # or --config.init_from_hf=...
    python train.py --config configs/modernbert_extend.py --workdir runs/mbert-32k \
        --config.data.source='tfds:pg19'
    ctxjax eval runs/mbert-32k --lengths 8192,16384,32768         # an encoder's tasks: mlm, mlm_recall

`--config.rope_scaling=linear` (PI) or `ntk` switch the method. The `:tiny` variant trains a byte-level
encoder from scratch through 16 -> 64 tokens in seconds.
"""

from ctxjax.train.defaults import default_config, use_tiny_run_settings


def get_config(variant=None):
    c = default_config()
    # ModernBERT-base's shapes (an imported ModernBERT brings its own architecture either way): every third
    # layer global (RoPE base 160k, the one the stages rescale), the others a symmetric window of 128 tokens
    # (|i - j| <= 64) with base 10k, which context extension leaves alone: they never look further.
    c.model.update(family="modernbert", vocab_size=50368, d_model=768, n_layers=22, n_heads=12, n_kv_heads=12,
                   d_ff=1152, max_seq_len=8192, causal=False, sliding_window=128 // 2 + 1,
                   full_attention_layers=tuple(range(0, 22, 3)))
    c.model.position = {"name": "rope", "theta": 160000.0}
    c.model.local_position = {"name": "rope", "theta": 10000.0}
    c.rope_scaling = "yarn"  # every stage past 8192 gets factor seq_len / 8192
    c.data.update(objective="mlm", mask_rate=0.3, mask_replace=(0.8, 0.1, 0.1), min_doc_tokens=32769,
                  mode="crop")
    c.execution.update(attention="blockwise", remat="dots_no_batch", dtype="bfloat16")
    c.tokens_per_step = 262144
    c.micro_batch_size = 1
    c.loss_chunk = 2048
    c.stages = [dict(steps=1000, seq_len=32768, lr=3e-5, warmup_steps=50)]
    c.optimizer.weight_decay = 1e-5
    c.eval.update(tasks=("encoder",), lengths=(8192, 16384, 32768))
    c.export_dir = "hf"
    c.checkpoint.every_steps = 100
    if variant == "tiny":
        use_tiny_run_settings(c)
        c.model.update(vocab_size=259, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=48,
                       max_seq_len=16, sliding_window=5, full_attention_layers=(0,))
        c.data.update(tokenizer="bytes+mask", mode="pack")
        c.tokens_per_step = 512  # 32 and 8 rows: divisible by the 8 simulated devices of the tests
        c.stages = [dict(steps=2, seq_len=16, lr=1e-3), dict(steps=2, seq_len=64, lr=1e-3)]
        c.eval = default_config().eval
        c.eval.tasks = ("encoder",)
    elif variant:
        raise ValueError(f"configs/modernbert_extend.py has variants '' and 'tiny', not {variant!r}")
    return c
