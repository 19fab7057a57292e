"""Tiny random Hugging Face models, the oracle for ctxjax numerics. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

# Small but not degenerate: GQA (4 query heads on 2 KV heads), head_dim 16 (8 frequencies).
LLAMA = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
L0 = 16  # original context for the scaled rope types: tests go below and above it

ROPE_CASES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0},
    "yarn_deepseek": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0,
                      "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 16, "beta_slow": 2},
    "yarn_untruncated": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0,
                         "truncate": False, "attention_factor": 1.2},
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": L0},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": L0,
                 "short_factor": [1.0 + 0.1 * i for i in range(8)],
                 "long_factor": [1.0 + 0.5 * i for i in range(8)]},
}


def llama(rope_scaling=None, seed=0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    fields = {**LLAMA, **overrides}
    if rope_scaling is not None:
        fields["rope_scaling"] = rope_scaling
    model = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    _randomize_norms(model)
    return model


def qwen3(rope_scaling=None, seed=0, **overrides):
    """Qwen3: per-head RMSNorm on q and k; head_dim defaults to 128 (4 x 128 wide q against a hidden size of
    64)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    fields = {**LLAMA, **overrides}
    if rope_scaling is not None:
        fields["rope_scaling"] = rope_scaling
    model = Qwen3ForCausalLM(Qwen3Config(**fields)).eval()
    _randomize_norms(model)  # the q/k norms too
    return model


def phi3(partial_rotary_factor=1.0, longrope=True, seed=0, **overrides):
    """Phi-3: q/k/v and gate/up fused, partial rotary, LongRoPE with Phi3Config's top-level L0."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    k = int(LLAMA["hidden_size"] // LLAMA["num_attention_heads"] * partial_rotary_factor) // 2
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial_rotary_factor}
    if longrope:
        rope.update(rope_type="longrope", short_factor=[1.0 + 0.1 * i for i in range(k)],
                    long_factor=[1.0 + 0.5 * i for i in range(k)])
    fields = {**LLAMA, "original_max_position_embeddings": L0, "pad_token_id": None, "eos_token_id": 2,
              **overrides}
    model = Phi3ForCausalLM(Phi3Config(**fields, rope_parameters=rope)).eval()
    _randomize_norms(model)
    return model


def gpt2(seed=0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    fields = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                  eos_token_id=0)
    model = GPT2LMHeadModel(GPT2Config(**{**fields, **overrides})).eval()
    _randomize_norms(model)
    return model


def _randomize_norms(model) -> None:
    """HF initialises norm weights to 1 and biases to 0; random values make a transposed or dropped norm
    parameter visible in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.startswith(("ln_f", "transformer.ln_f")):
                p.add_(0.1 * torch.randn_like(p))


def save(model, dtype=None, **kwargs) -> str:
    out = tempfile.mkdtemp(prefix="hf-")
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out, **kwargs)
    return out


def logits(model, tokens: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {} if positions is None else {"position_ids": torch.tensor(positions)}
        return model(torch.tensor(tokens), **kwargs).logits.float().numpy()


def tokens(batch: int, length: int, vocab: int = 97, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, vocab, (batch, length)).astype(np.int64)


def files(path: str) -> list[str]:
    return sorted(os.listdir(path))


def with_tokenizer(hf_dir: str) -> str:
    """Give an HF model directory a small word-level tokenizer.json (+ tokenizer_config.json)."""
    vocab = {f"w{i}": i for i in range(96)} | {"<unk>": 96}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(os.path.join(hf_dir, "tokenizer.json"))
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "w0", "unk_token": "<unk>"}, f)
    return hf_dir


# Gemma 3 (text): GQA, head_dim 16, a window of 8 on the local layers, layer 1 global with linear scaling over
# base 1e6, local layers base 1e4; query_pre_attn_scalar 24 (not head_dim) so a wrong attention scale shows.
GEMMA3 = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6,
              query_pre_attn_scalar=24, sliding_window=8,
              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
              rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})


def gemma3(seed=0, **overrides):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**{**GEMMA3, **overrides})).eval()
    _randomize_norms(model)  # Gemma's norms start at zero (scale 1 + w): random values make each one count
    return model


# Gemma 2: like GEMMA3 without q/k norms, one RoPE for all layers, and soft caps small enough to matter in a
# tiny model (its own defaults are 50 and 30).
GEMMA2 = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6,
              query_pre_attn_scalar=24, sliding_window=8, attn_logit_softcapping=0.05,
              final_logit_softcapping=0.5)


def gemma2(seed=0, **overrides):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(Gemma2Config(**{**GEMMA2, **overrides})).eval()
    _randomize_norms(model)
    return model


def gemma3_multimodal(seed=0):
    """Gemma 3 with a (tiny) SigLIP vision tower, as the 4B and larger models are published: the language
    model's config is `text_config` and its weights sit under `language_model.`."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14)
    config = Gemma3Config(text_config=GEMMA3, vision_config=vision.to_dict(), mm_tokens_per_image=4,
                          image_token_index=96, boi_token_index=94, eoi_token_index=95)
    model = Gemma3ForConditionalGeneration(config).eval()
    _randomize_norms(model)
    return model


# Encoders: BERT and RoBERTa (post-norm, learned positions; RoBERTa's from padding_idx + 1 = 2) and ModernBERT
# (layers 0 and 2 global, layer 1 local with |i - j| <= 2, RoPE bases 1e4 global / 1e3 local).
ENCODER = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=16)
MODERNBERT = dict(ENCODER, num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=4,
                  global_rope_theta=1e4, local_rope_theta=1e3, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                  cls_token_id=0, sep_token_id=0)


def encoder(architecture: str, seed=0, **overrides):
    """A tiny random encoder of a transformers class (BertForMaskedLM, RobertaModel, ModernBertForMaskedLM,
    ...), every norm and bias randomised so that a dropped or misplaced one shows."""
    import transformers

    torch.manual_seed(seed)
    family = architecture.split("For")[0].removesuffix("Model")
    config_class = getattr(transformers, f"{family}Config")
    fields = MODERNBERT if family == "ModernBert" else dict(ENCODER, max_position_embeddings=18 if family ==
                                                           "Roberta" else 16)
    model = getattr(transformers, architecture)(config_class(**{**fields, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def encoder_output(model, tokens: np.ndarray) -> np.ndarray:
    """MLM logits, or the last hidden state of a bare encoder."""
    with torch.no_grad():
        out = model(torch.tensor(tokens))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float().numpy()
