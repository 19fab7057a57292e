"""A 1B Llama (Llama-3.2-1B shapes: 16 layers, d_model 2048, tied embeddings) extended 8k -> 16k -> 32k with
YaRN on one TPU host: FSDP over half its chips x tensor parallelism over 2, splash attention, whole blocks
rematerialised. docs/tpu.md has its plans for v5e-8, v4-8, v5p-8 and the Colab TPUs (v5e-1, v2-8).

    ctxjax plan --config configs/tpu_1b.py --topology v5e-8
    python train.py --config configs/tpu_1b.py --workdir runs/1b-32k --config.init_from_hf=/path/to/model-8k

The shapes are Llama-3.2-1B's, but its released checkpoint already reaches 128k (llama3 scaling, factor 32):
these stages lie inside its context and nothing would be rescaled. The recipe extends a model of these shapes
whose own context is 8k. On one v5e chip (Colab) the full model does not fit; with LoRA it trains up to 32256
tokens (docs/tpu.md): `--config.mesh.tensor=1 --config.micro_batch_size=1 --config.adaptation.lora_rank=8`.
"""

from ctxjax.train.defaults import default_config, use_tiny_run_settings


def get_config(variant=None):
    c = default_config()
    c.model.update(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                   max_seq_len=8192, norm_eps=1e-5, tie_embeddings=True, param_dtype="float32")
    c.model.position = {"name": "rope", "theta": 500000.0}
    c.rope_scaling = "yarn"
    # `ctxjax plan --topology v5e-8` (docs/tpu.md) chose these: heads split over 2 chips hold the 32k stage at
    # 11.8 GiB per v5e chip, FSDP alone over 8 at 12.9.
    c.execution.update(attention="splash", remat="full", dtype="bfloat16")
    c.mesh.update(data=1, fsdp=-1, tensor=2, sequence=1)
    c.data.update(source="tfds:pg19", min_doc_tokens=0, mode="pack")
    c.tokens_per_step = 2**20  # 1M tokens per step
    c.micro_batch_size = 4  # one row per fsdp shard of an 8-chip host per micro-batch
    c.loss_chunk = 4096
    c.stages = [
        dict(steps=200, seq_len=16384, lr=3e-5, warmup_steps=20),
        dict(steps=200, seq_len=32768, lr=2e-5, warmup_steps=10),
    ]
    c.optimizer.weight_decay = 0.0
    c.checkpoint.update(every_steps=50, max_to_keep=2)
    c.export_dir = "hf"
    # The same layout at toy size on 8 CPU devices: fsdp 4 x tensor 2, one row per fsdp shard per
    # micro-batch, tied embeddings, YaRN for the longer stages.
    if variant == "tiny":
        use_tiny_run_settings(c)
        c.model.update(d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, d_ff=128, max_seq_len=32)
        c.tokens_per_step = 1024
        c.loss_chunk = 32
        c.micro_batch_size = 4
        c.stages = [dict(steps=2, seq_len=64, lr=1e-3), dict(steps=2, seq_len=128, lr=1e-3)]
    elif variant:
        raise ValueError(f"configs/tpu_1b.py has variants '' and 'tiny', not {variant!r}")
    return c
