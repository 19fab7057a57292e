"""The demo: a small Llama-style model trained from scratch at 128 tokens on the embedded corpus (the Python
standard library's source) with synthetic passkey documents mixed in, so that it learns to retrieve, then
extended with YaRN to 512 tokens. Both stage ends are evaluated at 128, 256 and 512 tokens
(WORKDIR/eval/step_N); `ctxjax extension-table WORKDIR` puts the model before extension (the end of the
128-token stage, used directly at the longer lengths) beside the model after it. `make demo` runs all of it.

    python train.py --config configs/demo.py --workdir runs/demo
    python train.py --config configs/demo.py:tiny --workdir /tmp/demo-tiny     # seconds, for tests

Choices, each measured (docs/demo.md has the runs): retrieval is what a model this
small learns slowest, so
  - two layers of eight heads: at least as quick to learn retrieval per step as four layers of four, at half
    the cost;
  - per-head q/k norms (Qwen3's; the export is a Qwen3ForCausalLM): attention is sharp from the start, and
    copying starts about 3x sooner;
  - most rows are passkey documents, one per row (`crop`: nothing cut between key and question), their
    filler sentences drawn at random (`filler=random`): with the evaluation's periodic filler the model
    learns to find the key by its offset from the question, not by its content, and fails at other offsets
    (passkey at 4x after extension: 18% with the periodic filler, 78% with the drawn one);
  - YaRN with beta_fast=4, beta_slow=1 instead of 32/1: at a 128-token original context the defaults
    interpolate even the fastest rotations, which the short-range copying depends on
    (reference papers.md §10.6);
  - YaRN's factor 8 (the scaling for 1024 tokens) for the 512-token stage, not 4: a key 480 tokens back then
    rotates like one 60 tokens back in the interpolated frequencies, well inside what the model learned at
    128 tokens (passkey at 4x: 78% with factor 4, 100% with 8, from the same step-1800 checkpoint);
  - the extension stage at a sixth of the peak learning rate, with passkey documents as long as its rows.
"""

from ctxjax.train.defaults import default_config, use_tiny_run_settings

BASE_LEN = 128
# Passkey documents (ctxjax/data/retrieval_source.py): short ones (107-126 tokens with the demo's tokenizer)
# that teach retrieval at 128 tokens, long ones (404-500 tokens) for the extension stage. Nearly a row long,
# as the evaluation's prompts are: shorter documents hold mostly short key-to-question distances, and the
# model then retrieves only over those. In `crop` mode a mixture weight is a share of rows: about 19% Python
# source, 54% short, 27% long documents (mostly wasted at 128 tokens: cropped to a window that rarely holds
# the question).
SHORT = "retrieval:passkey:chars=380-460:docs=2000:filler=random"
LONG = "retrieval:passkey:chars=1500-1850:docs=1000:filler=random:seed=1"


def yarn(factor):
    return dict(rope_type="yarn", factor=float(factor), original_max_position_embeddings=BASE_LEN,
                beta_fast=4.0, beta_slow=1.0)


def get_config(variant=None):
    c = default_config()
    # On a CPU: shallow layers train faster unrolled, and `auto` attention switches from xla to blockwise for
    # the 512-token stage, where that is faster (docs/benchmarks.md).
    c.model.update(vocab_size=2048, d_model=128, n_layers=2, n_heads=8, n_kv_heads=8, qk_norm=True,
                   max_seq_len=BASE_LEN)
    c.execution.update(scan_unroll=2, attention="auto")
    c.data.update(source=f"mix:2*stdlib;2*{SHORT};2*{LONG}", vocab_size=2048, mode="crop")
    c.tokens_per_step = 2048
    c.stages = [
        dict(steps=1800, seq_len=BASE_LEN, lr=6e-3, warmup_steps=20),
        dict(steps=400, seq_len=4 * BASE_LEN, lr=1e-3, warmup_steps=20, position=yarn(8)),
    ]
    c.log_every = 50
    c.checkpoint.update(every_steps=0, max_to_keep=len(c.stages))  # one checkpoint per stage end, all kept
    c.export_dir = "hf"
    # The before/after table's measurements: at 1x, 2x and 4x the base length, at the end of every stage.
    c.eval_at_stage_end = True
    c.eval.update(tasks=("ppl", "passkey", "multikey"), ppl_methods=("fixed_target",), source="stdlib:eval",
                  lengths=(BASE_LEN, 2 * BASE_LEN, 4 * BASE_LEN), max_documents=16, max_windows=16, trials=8)
    if variant == "tiny":
        use_tiny_run_settings(c)
        c.model.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, qk_norm=False, max_seq_len=16)
        c.tokens_per_step = 512  # 32/16/8 rows: divisible by the 8 simulated devices of the tests
        c.rope_scaling = "yarn"  # stages past 16 tokens get YaRN with factor seq_len / 16
        c.stages = [dict(steps=3, seq_len=16, lr=3e-3, warmup_steps=1), dict(steps=2, seq_len=32, lr=1e-3),
                    dict(steps=2, seq_len=64, lr=1e-3)]
        c.data.mode, c.checkpoint.max_to_keep = "pack", len(c.stages)
        # tests ask for evaluation where they need it
        c.eval_at_stage_end, c.eval = False, default_config().eval
    elif variant:
        raise ValueError(f"configs/demo.py has variants '' and 'tiny', not {variant!r}")
    return c
