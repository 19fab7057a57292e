"""A BERT-style encoder's learned position table grown 512 -> 4096 with masked-language modelling (issue 19):
the table is copied (rows 512-1023 start as rows 0-511, and so on: Longformer's initialisation, which keeps
the local position pattern a trained table has) at the stage boundary, then trained at 4096 on documents long
enough to fill a row, with BERT's objective (15% of tokens, 80/10/10 mask/random/keep).

    ctxjax import-hf path/to/bert --workdir runs/bert-4k       # or --config.init_from_hf=path/to/bert
    python train.py --config configs/bert_extend.py --workdir runs/bert-4k --config.data.source='tfds:pg19'
    ctxjax eval runs/bert-4k --lengths 512,1024,2048,4096     # an encoder's tasks: mlm, mlm_recall

Stage 0 re-adapts at the original 512 tokens; stage 1 trains at 4096. The `:tiny` variant trains a byte-level
encoder from scratch through the same two stages in seconds.
"""

from ctxjax.train.defaults import default_config, use_tiny_run_settings


def get_config(variant=None):
    c = default_config()
    # BERT-base's shapes (an imported BERT brings its own architecture either way): post-norm layers, token
    # types, the MLM head; exported as a BertForMaskedLM.
    c.model.update(family="bert", vocab_size=30522, d_model=768, n_layers=12, n_heads=12, n_kv_heads=None,
                   max_seq_len=512, type_vocab_size=2, causal=False)
    c.model.position = {"name": "learned"}
    c.learned_extend_method = "copy"
    c.data.update(objective="mlm", mask_rate=0.15, mask_replace=(0.8, 0.1, 0.1), min_doc_tokens=4097,
                  mode="crop")
    c.tokens_per_step = 65536
    c.micro_batch_size = 2
    c.execution.remat = "dots_no_batch"
    c.stages = [
        dict(steps=200, seq_len=512, lr=5e-5, warmup_steps=20),
        dict(steps=2000, seq_len=4096, lr=5e-5, warmup_steps=100),
    ]
    c.eval.update(tasks=("encoder",), lengths=(512, 1024, 2048, 4096))
    c.export_dir = "hf"
    if variant == "tiny":
        use_tiny_run_settings(c)
        c.model.update(vocab_size=259, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
        c.data.update(tokenizer="bytes+mask", mode="pack")
        c.tokens_per_step = 1024  # 32 and 8 rows: divisible by the 8 simulated devices of the tests
        c.stages = [dict(steps=2, seq_len=32, lr=1e-3), dict(steps=2, seq_len=128, lr=1e-3)]
        c.eval = default_config().eval
        c.eval.tasks = ("encoder",)
    elif variant:
        raise ValueError(f"configs/bert_extend.py has variants '' and 'tiny', not {variant!r}")
    return c
