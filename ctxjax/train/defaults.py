"""The default training config every recipe in configs/ starts from; each field says what it does."""

from __future__ import annotations

import dataclasses

import ml_collections

from ctxjax.adaptation import AdaptationConfig
from ctxjax.config import ModelConfig
from ctxjax.execution import ExecutionConfig
from ctxjax.data.config import DataConfig
from ctxjax.evaluate.config import EvalConfig


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # What the model is: ModelConfig fields (ctxjax/config.py); `position` is {"name": scheme, **fields} (see
    # ctxjax.positions). For a model imported from Hugging Face, its checkpoint says (a window set here
    # aside).
    c.model = ml_collections.ConfigDict(ModelConfig().to_dict())
    # How it runs: ExecutionConfig fields (ctxjax/execution.py): attention kernel and tiles, remat, scan
    # unrolling, compute dtype. Free to change when a run resumes.
    c.execution = ml_collections.ConfigDict(ExecutionConfig().to_dict())
    # How training adapts it: AdaptationConfig fields (ctxjax/adaptation.py): LoRA rank / alpha / targets,
    # S²-Attn groups. Never exported (adapters are merged, or written as a PEFT adapter).
    c.adaptation = ml_collections.ConfigDict(AdaptationConfig().to_dict())
    # A Hugging Face directory to start from when the work directory has no checkpoint yet
    # (same as running `ctxjax import-hf` first); "" trains from scratch.
    c.init_from_hf = ""
    c.data = ml_collections.ConfigDict({f.name: getattr(DataConfig(), f.name)
                                        for f in dataclasses.fields(DataConfig)})
    # Stages of context growth: steps, seq_len, lr (peak), optional warmup_steps, min_lr_ratio, batch_size
    # (default tokens_per_step // seq_len), position (overrides of model.position fields, e.g.
    # {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}) and data_source (a source
    # spec read by that stage instead of data.source, with the same tokenizer; docs/data.md), gate
    # (conditions on the stage-end evaluation, e.g. dict(metric="passkey/acc", min=0.9)), extend_steps and
    # max_extensions (what a failed gate does; README "Stage gates", ctxjax/train/gates.py).
    c.stages = [dict(steps=100, seq_len=256, lr=1e-3, warmup_steps=10)]
    # A rope_type ("linear", "ntk", "yarn", "llama3", "dynamic") applied to every stage longer than the base
    # model's context that sets no position overrides of its own; "" applies none.
    c.rope_scaling = ""
    c.tokens_per_step = 8192
    c.min_lr_ratio = 0.1  # cosine decay within each stage ends at lr * min_lr_ratio
    # At most this many rows per forward/backward; larger batches accumulate gradients. 0: no limit.
    c.micro_batch_size = 0
    c.optimizer = ml_collections.ConfigDict(dict(
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
        clip_norm=1.0,  # global gradient-norm clipping; 0 disables
        # Comma-separated regexes over parameter paths (e.g. "embed,norm" for LongLoRA's embeddings + norms);
        # "" trains everything, or only the adapters when adaptation.lora_rank > 0 (adapters always train).
        # Frozen parameters keep no optimizer state and get no gradients.
        trainable="",
    ))
    c.loss_chunk = 1024  # the loss computes logits this many positions at a time
    c.z_loss = 0.0  # weight of PaLM's z-loss, mean log(Z)^2 of the softmax normaliser; 0 disables
    # Mesh axis sizes; one may be -1 (all remaining devices). fsdp shards parameters and optimizer state,
    # tensor splits heads/MLP/vocabulary, sequence splits the length (execution.attention ring or ulysses).
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=1))
    # With mesh.sequence > 1 and ring attention, reorder every row so that sequence shard i holds chunks i and
    # 2S-1-i of the 2S chunks: each shard then does the same causal attention work (the loss is unchanged).
    c.ring_zigzag = True
    c.learned_extend_method = "interpolate"  # how a learned position table grows at a stage boundary
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=200, max_to_keep=3, async_save=True))
    c.log_every = 10  # steps between metric syncs (the loop never waits for the device in between)
    # A Hugging Face directory written after the last step (relative paths are inside the work directory);
    # "" exports nothing.
    c.export_dir = ""
    # Evaluation at the end of every stage (perplexity by length, passkey...; see docs/evaluation.md),
    # written to WORKDIR/eval/step_N and logged with the metrics. `eval` holds EvalConfig fields; its
    # source defaults to the held-out split of data.source.
    c.eval_at_stage_end = False
    c.eval = ml_collections.ConfigDict({f.name: getattr(EvalConfig(), f.name)
                                        for f in dataclasses.fields(EvalConfig)})
    c.eval.update(tasks=("ppl",), ppl_methods=("fixed_target",), source="", max_documents=16, max_windows=16)
    c.peak_flops = 0.0  # FLOP/s of the accelerator for MFU; 0 measures a float32 matmul at start-up
    return c


def use_tiny_run_settings(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What every recipe's `:tiny` variant shares, so tests compile and run it in seconds: the byte
    tokenizer (nothing to train), 40 documents, no prefetch thread, synchronous checkpoints at stage ends
    only, and a fixed peak FLOP/s (no start-up matmul benchmark)."""
    c.data.update(source="stdlib", tokenizer="bytes", max_documents=40, prefetch=0, min_doc_tokens=0)
    c.model.update(vocab_size=258)
    c.execution.update(attention="xla", remat="none", dtype="float32")
    c.checkpoint.update(every_steps=0, async_save=False)
    c.micro_batch_size = 0
    c.log_every = 2
    c.peak_flops = 1e9
    return c
