"""Extend an imported Hugging Face Llama 4x (e.g. 4k -> 16k) with one field choosing the method:
`rope_scaling` = "yarn" (default), "linear" (PI), "ntk", "llama3" or "dynamic".

    ctxjax import-hf path/to/llama --workdir runs/llama-16k        # or --config.init_from_hf=path/to/llama
    python train.py --config configs/llama_extend.py --workdir runs/llama-16k --config.rope_scaling=linear

The model's own context (max_position_embeddings) is the original length; the 16k stage gets
factor 4 and original_max_position_embeddings = the model's context. YaRN's paper fine-tunes ~400 steps.
LongLoRA's recipe (adapters + trainable embeddings and norms + S²-Attn in quarter-length groups) is three
overrides: `--config.adaptation.lora_rank=8 --config.optimizer.trainable=embed,norm
--config.adaptation.shifted_sparse_group=4096`.
Mistral, Qwen2, Qwen3 and Phi-3 imports work the same; a Mistral keeps its sliding window unless the run
widens it (`--config.model.sliding_window=16384`, as MistralLite and YaRN-Mistral did). A model that is
already scaled (Llama 3.1: llama3, Phi-3: longrope) is extended with its own type, which keeps its original
context and settings: `--config.rope_scaling=llama3` or `=longrope` (YaRN would replace them and is refused).
Gemma 2 and 3 import too; Gemma 3's scaling goes to its global layers only (the local ones never look past
their window), and its 4B and larger models (image+text checkpoints, of which ctxjax reads the language model)
already scale linearly there: `--config.rope_scaling=linear`.
"""

from ctxjax.train.defaults import default_config, use_tiny_run_settings


def get_config(variant=None):
    c = default_config()
    # Architecture fields are read from the imported checkpoint; these are the training-time choices.
    c.execution.update(attention="blockwise", remat="dots_no_batch", dtype="bfloat16")
    c.model.update(param_dtype="float32", max_seq_len=4096)
    c.rope_scaling = "yarn"
    c.data.update(source="tfds:pg19", min_doc_tokens=16385, mode="crop")
    c.tokens_per_step = 65536
    c.micro_batch_size = 1
    c.loss_chunk = 2048
    c.stages = [dict(steps=400, seq_len=16384, lr=2e-5, warmup_steps=20)]
    c.optimizer.weight_decay = 0.0
    c.export_dir = "hf"
    c.checkpoint.every_steps = 100
    if variant == "tiny":
        use_tiny_run_settings(c)
        c.model.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
        c.data.mode = "pack"
        c.tokens_per_step = 512
        c.stages = [dict(steps=2, seq_len=64, lr=1e-3)]
    elif variant:
        raise ValueError(f"configs/llama_extend.py has variants '' and 'tiny', not {variant!r}")
    return c
