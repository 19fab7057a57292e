"""A 7B-class Llama (Llama-3-8B shapes) extended 8k -> 32k -> 64k on a TPU pod slice: FSDP over the
remaining chips, tensor parallelism over 4, sequence parallelism (ring attention) in the 64k stage.

    # on every host of the slice, with a work directory all of them mount at the same path (docs/tpu.md,
    # "How to run on a pod": ctxjax writes to file paths, not gs:// URLs):
    python train.py --config configs/tpu_pod.py --workdir /mnt/ctx/run --distributed \\
        --config.init_from_hf=/mnt/ctx/llama3-8b

bfloat16 compute with float32 params and optimizer state; activations rematerialised except weight matmuls.
"""

from ctxjax.train.defaults import default_config, use_tiny_run_settings


def get_config(variant=None):
    c = default_config()
    c.model.update(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                   max_seq_len=8192, norm_eps=1e-5, param_dtype="float32")
    c.execution.update(attention="ring", remat="dots_no_batch", dtype="bfloat16")
    c.model.position = {"name": "rope", "theta": 500000.0}
    c.rope_scaling = "yarn"
    c.mesh.update(data=1, fsdp=-1, tensor=4, sequence=2)
    c.data.update(source="tfds:pg19", min_doc_tokens=0, mode="pack")
    c.tokens_per_step = 4 * 2**20  # 4M tokens per step
    # One row per fsdp shard per micro-batch: `ctxjax plan --topology v5p-128` (docs/tpu.md) puts the 64k
    # stage at 44 GiB per chip this way, where 16 rows (two per shard) needed 125 GiB of a v5p's 95.
    c.micro_batch_size = 8
    c.loss_chunk = 4096
    c.stages = [
        dict(steps=200, seq_len=32768, lr=2e-5, warmup_steps=20),
        dict(steps=200, seq_len=65536, lr=1e-5, warmup_steps=10),
    ]
    c.optimizer.weight_decay = 0.0
    c.checkpoint.update(every_steps=50, max_to_keep=2)
    c.export_dir = "hf"
    # The pod layout at toy size on 8 CPU devices: fsdp 2 x tensor 2 x sequence 2 (ring).
    if variant == "tiny":
        use_tiny_run_settings(c)
        c.model.update(d_model=64, n_layers=2, n_heads=8, n_kv_heads=4, d_ff=128, max_seq_len=32)
        c.execution.attention = "ring"
        c.mesh.update(data=1, fsdp=-1, tensor=2, sequence=2)
        c.tokens_per_step = 512
        c.micro_batch_size = 4
        c.loss_chunk = 32
        c.stages = [dict(steps=2, seq_len=64, lr=1e-3), dict(steps=2, seq_len=128, lr=1e-3)]
    elif variant:
        raise ValueError(f"configs/tpu_pod.py has variants '' and 'tiny', not {variant!r}")
    return c
