"""An encoder from Hugging Face to Hugging Face, as a user runs it: a tiny BERT / RoBERTa / ModernBERT
checkpoint is trained at twice its original context with masked-language modelling through the encoder
recipes (the learned table grown by copying, ModernBERT's global RoPE scaled), evaluated by length, exported,
and the export gives transformers the logits ctxjax computes, past the original context."""

import json
import os

import jax
import numpy as np
import pytest
import torch
from hf_oracle import encoder
from test_train import tiny

from ctxjax import cli
from ctxjax.train import train_and_evaluate

# The recipes' tiny variants with a model imported from HF: its own sizes; a byte tokenizer with a mask token
# (ids < 259, inside the HF vocabulary of 300); two stages, at the original 16 positions and then 32.
RECIPE = {"BertForMaskedLM": "bert_extend", "RobertaForMaskedLM": "bert_extend",
          "ModernBertForMaskedLM": "modernbert_extend"}
STAGES = [dict(steps=2, seq_len=16, lr=1e-3), dict(steps=2, seq_len=32, lr=1e-3)]


@pytest.mark.parametrize("architecture", sorted(RECIPE))
def test_an_imported_encoder_trains_longer_with_mlm_and_exports_what_transformers_reproduces(
        architecture, tmp_path, capsys):
    hf_dir = str(tmp_path / "hf-in")
    encoder(architecture, vocab_size=300).save_pretrained(hf_dir)
    workdir = str(tmp_path / "run")
    config = tiny(RECIPE[architecture], init_from_hf=hf_dir, stages=STAGES, export_dir="hf",
                  **{"data.tokenizer": "bytes+mask"})
    summary = train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    assert summary["final_step"] == 4 and np.isfinite(summary["loss"])

    assert cli.main(["eval", workdir, "--out", str(tmp_path / "eval"), "--lengths", "16,32",
                     "--max-documents", "2", "--trials", "1", "--depths", "1", "--target-tokens", "8"]) == 0
    results = json.load(open(tmp_path / "eval" / "results.json"))
    assert set(results["mlm"]["by_length"]) == {"16", "32"}  # masked-token loss at both lengths

    export = os.path.join(workdir, "hf")
    import transformers
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(export).eval()
    assert type(reloaded).__name__ == architecture
    assert reloaded.config.max_position_embeddings >= 32  # grown past the original 16
    capsys.readouterr()
    assert cli.main(["check-logits", export, "--workdir", workdir, "--lengths", "8,32",
                     "--atol", "1e-4"]) == 0
    assert "same answers" in capsys.readouterr().out
    with torch.no_grad():  # and the trained weights are not the imported ones
        before = encoder(architecture, vocab_size=300)
        tokens = torch.arange(1, 17)[None]
        assert not torch.allclose(before(tokens).logits, reloaded(tokens).logits, atol=1e-3)
