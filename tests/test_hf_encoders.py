"""Encoders <-> transformers: BertForMaskedLM, BertModel, RobertaForMaskedLM, RobertaModel,
ModernBertForMaskedLM and ModernBertModel, imported and exported with equal outputs (masked-LM logits, or a
bare encoder's last hidden state) below and above the original context; the learned table's growth,
RoBERTa's offset and the exports that have no Hugging Face class."""

import json
import os

import hf_oracle as oracle
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from ctxjax import ModelConfig, cli, hf, positions
from ctxjax.errors import InputError
from ctxjax.model import Transformer, init_params
from ctxjax.train.step import loss_sums, output_projection

ARCHITECTURES = ("BertForMaskedLM", "BertModel", "RobertaForMaskedLM", "RobertaModel",
                 "ModernBertForMaskedLM", "ModernBertModel")
ATOL = 1e-4
_IMPORTED = {}


def imported(architecture):
    """(transformers model, its directory, ctxjax's config and params of it), made once per class."""
    if architecture not in _IMPORTED:
        model = oracle.encoder(architecture)
        directory = oracle.save(model)
        _IMPORTED[architecture] = (model, directory, *hf.load_pretrained(directory))
    return _IMPORTED[architecture]


def rows(length):
    # RoBERTa gives every token equal to its pad id (1) the padding position; these rows hold no padding.
    return oracle.tokens(2, length, seed=1) % 95 + 2


def ours(cfg, params, tokens):
    return np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(tokens)))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_import_matches_transformers(architecture):
    model, _, cfg, params = imported(architecture)
    assert not cfg.causal and cfg.output_head == ("mlm" if architecture.endswith("ForMaskedLM") else "none")
    for length in (5, cfg.max_seq_len):
        want = oracle.encoder_output(model, rows(length))
        assert want.shape[-1] == (cfg.vocab_size if cfg.output_head == "mlm" else cfg.d_model)
        np.testing.assert_allclose(ours(cfg, params, rows(length)), want, atol=ATOL)


def extended(cfg, params, length):
    """The model for `length` tokens: a learned table grown by copying (Longformer), or ModernBERT's global
    RoPE stretched with YaRN (its local layers keep theirs)."""
    if cfg.family == "modernbert":
        return cfg.replace(position=cfg.position.stretched("yarn", length, cfg.max_seq_len),
                           max_seq_len=length), params
    params = cfg.position.extend(params, length, method="copy")
    return cfg.position.fitted_to_params(cfg, params), params


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_export_reloads_in_transformers_below_and_above_the_original_context(architecture, tmp_path):
    _, _, cfg, params = imported(architecture)
    original = cfg.max_seq_len
    cfg, params = extended(cfg, params, 2 * original)
    out = hf.save_pretrained(cfg, params, str(tmp_path / "hf"))
    assert json.load(open(os.path.join(out, "config.json")))["architectures"] == [architecture]
    auto = transformers.AutoModelForMaskedLM if cfg.output_head == "mlm" else transformers.AutoModel
    reloaded = auto.from_pretrained(out).eval()
    assert type(reloaded).__name__ == architecture
    for length in (original - 3, 2 * original):
        np.testing.assert_allclose(ours(cfg, params, rows(length)),
                                   oracle.encoder_output(reloaded, rows(length)), atol=ATOL)
    cfg_back, params_back = hf.load_pretrained(out)  # and back: the same model
    assert cfg_back == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_back, jax.device_get(params))


def test_modernbert_windows_and_ropes_are_read_as_transformers_defines_them():
    _, _, cfg, _ = imported("ModernBertForMaskedLM")
    # local_attention=4: HF's local layers see |i - j| <= 2, ours |i - j| < 3; every second layer global.
    assert cfg.sliding_window == 3 and cfg.full_attention_layers == (0, 2)
    assert cfg.position.theta == 1e4 and cfg.local_position.theta == 1e3


def test_learned_table_grows_by_copy_or_interpolation_behind_robertas_offset():
    _, _, cfg, params = imported("RobertaForMaskedLM")
    table = np.asarray(params["pos_embed"]["embedding"])  # [2 + 16, D]
    assert table.shape[0] == cfg.max_seq_len + 2
    copied = np.asarray(cfg.position.extend(params, 40, method="copy")["pos_embed"]["embedding"])
    np.testing.assert_array_equal(copied[:2], table[:2])  # the padding rows stay
    np.testing.assert_array_equal(copied[2:], table[2:][np.arange(40) % 16])
    spread = np.asarray(cfg.position.extend(params, 31, method="interpolate")["pos_embed"]["embedding"])
    np.testing.assert_array_equal(spread[:2], table[:2])
    np.testing.assert_allclose(spread[2::2], table[2:], atol=1e-6)  # 16 -> 31: every other row is an old one
    np.testing.assert_allclose(spread[3], (table[2] + table[3]) / 2, atol=1e-6)


def test_a_table_without_rows_past_its_offset_is_refused_in_one_line(tmp_path):
    config = {"architectures": ["RobertaForMaskedLM"], "vocab_size": 97, "hidden_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 48,
              "max_position_embeddings": 2, "pad_token_id": 1}
    with pytest.raises(InputError, match="leaves no position after RoBERTa's offset of 2") as error:
        hf.model_config_from_hf(config)
    assert "\n" not in str(error.value)
    scheme = positions.Learned(offset=2)
    with pytest.raises(InputError, match="none past its offset of 2"):
        scheme.extend({"pos_embed": {"embedding": np.zeros((2, 4))}}, 8)


@pytest.mark.parametrize("config, message", [
    (ModelConfig(causal=False), "a bidirectional \\(causal=False\\) llama model has no Hugging Face class"),
    (ModelConfig(causal=False, head="mlm"), "a bidirectional"),
    (ModelConfig(head="none"), "head='none' has no Hugging Face class"),
    (ModelConfig(family="gpt2", position=positions.Learned(offset=2)), "a table offset \\(2\\) is RoBERTa's"),
    (ModelConfig(family="modernbert", causal=False, type_vocab_size=2), "token-type embeddings"),
    (ModelConfig(family="bert", causal=False, position=positions.Learned()), "type_vocab_size >= 1"),
    (ModelConfig(family="bert", causal=False, head="lm", type_vocab_size=2, position=positions.Learned()),
     "head='mlm'"),
    (ModelConfig(family="bert", causal=False, type_vocab_size=2), "positional scheme 'rope'"),
])
def test_exports_without_a_hugging_face_class_are_refused_in_one_line(config, message, tmp_path):
    params = init_params(config, jax.random.PRNGKey(0))
    with pytest.raises(InputError, match=message) as error:
        hf.save_pretrained(config, params, str(tmp_path / "out"))
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "out")


def test_encoders_are_bidirectional_by_definition():
    with pytest.raises(InputError, match="is an encoder: set causal=False"):
        ModelConfig(family="bert")
    with pytest.raises(InputError, match="head='mlm' predicts masked tokens from both sides"):
        ModelConfig(head="mlm")


def test_a_bare_encoder_returns_hidden_states_and_has_no_logits():
    _, _, cfg, params = imported("BertModel")
    model = Transformer(cfg)
    hidden = model.apply({"params": params}, jnp.asarray(rows(6)))
    assert hidden.shape == (2, 6, cfg.d_model)
    with pytest.raises(InputError, match="a bare encoder \\(head='none'\\) has no logits"):
        model.apply({"params": params}, hidden, method=Transformer.logits_from_hidden)
    with pytest.raises(InputError, match="no output projection"):
        output_projection(cfg, params)


def test_the_masked_lm_loss_counts_the_decoder_bias():
    _, _, cfg, params = imported("BertForMaskedLM")
    tokens = jnp.asarray(rows(8), jnp.int32)
    targets = jnp.roll(tokens, 1, axis=1)
    batch = dict(tokens=tokens, positions=jnp.broadcast_to(jnp.arange(8), (2, 8)),
                 segment_ids=jnp.ones((2, 8), jnp.int32), targets=targets, weights=jnp.ones((2, 8)))
    total, _, count = loss_sums(Transformer(cfg), params, batch, loss_chunk=4)
    logits = ours(cfg, params, tokens)  # the bias included, as transformers' logits
    want = -np.take_along_axis(jax.nn.log_softmax(logits), np.asarray(targets)[..., None], -1).sum()
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    assert float(count) == 16
    assert output_projection(cfg, params)[1].shape == (cfg.vocab_size,)


def test_check_logits_compares_an_encoder(capsys):
    for architecture, compared in (("RobertaForMaskedLM", "top-1 agree"),
                                   ("BertModel", "last hidden states")):
        directory = imported(architecture)[1]
        assert cli.main(["check-logits", directory, "--lengths", "6,16", "--random-tokens", "--atol",
                         "1e-4"]) == 0
        out = capsys.readouterr().out
        assert compared in out and "same answers" in out


@pytest.mark.parametrize("architecture", ("BertForMaskedLM", "ModernBertForMaskedLM"))
def test_an_untied_decoder_keeps_its_own_weight_and_bias(architecture, tmp_path):
    # Untied, BERT's decoder reads its own bias, not the head's `bias` (which transformers leaves unused).
    model = oracle.encoder(architecture, tie_word_embeddings=False)
    cfg, params = hf.load_pretrained(oracle.save(model))
    assert not cfg.tied and "lm_head" in params
    np.testing.assert_allclose(ours(cfg, params, rows(12)), oracle.encoder_output(model, rows(12)), atol=ATOL)
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(
        hf.save_pretrained(cfg, params, str(tmp_path / "hf"))).eval()
    np.testing.assert_allclose(ours(cfg, params, rows(12)), oracle.encoder_output(reloaded, rows(12)),
                               atol=ATOL)


@pytest.mark.parametrize("architecture, flags", [
    ("RobertaForMaskedLM", ["--positions", "32", "--method", "copy"]),
    ("ModernBertModel", ["--rope-type", "yarn", "--factor", "2"]),
])
def test_extend_hf_then_check_logits_past_the_original_context(architecture, flags, tmp_path, capsys):
    out = str(tmp_path / "extended")
    assert cli.main(["extend-hf", imported(architecture)[1], "--out", out, *flags]) == 0
    assert "context:   16 -> 32 tokens" in capsys.readouterr().out
    assert cli.main(["check-logits", out, "--lengths", "32", "--random-tokens", "--atol", "1e-4"]) == 0
