"""Tokenizers: a trained SentencePiece model round-trips text, is cached and reused; .model and HF
tokenizer.json files load; the tokenizer is kept in WORKDIR/tokenizer; a too-large vocabulary is refused."""

import os

import pytest
from hypothesis import given, settings, strategies as st

from ctxjax.data import (DataError, HuggingFaceTokenizer, SentencePieceTokenizer, load_tokenizer,
                         make_pipeline, resolve_tokenizer, tokenizer_training)
from ctxjax.data.config import as_data_config

SAMPLE = '''def greet(name: str) -> str:
    """Say hello."""
\treturn f"Hello, {name}!"  # tabs, quotes and braces

class Point:
    x: int = 0
    y: int = 0
'''


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    for i in range(12):
        (root / f"m{i}.py").write_text(SAMPLE.replace("greet", f"greet_{i}") * (i + 1))
    return f"text:{root}/*.py"


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("work"))
    return resolve_tokenizer(as_data_config(source=corpus, vocab_size=512), workdir), workdir


def test_trained_sentencepiece_round_trips_training_text(trained):
    tokenizer, _ = trained
    assert isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.vocab_size <= 512
    ids = tokenizer.encode(SAMPLE)
    assert tokenizer.decode(ids) == SAMPLE
    assert len(ids) < len(SAMPLE) / 2  # it learned pieces, not just characters


@settings(max_examples=80, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_trained_sentencepiece_round_trips_any_text(trained, text):
    tokenizer, _ = trained
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_trained_tokenizer_is_cached_in_the_workdir_and_reused(trained, corpus, monkeypatch):
    tokenizer, workdir = trained
    assert os.path.exists(os.path.join(workdir, "tokenizer", "tokenizer.model"))

    def no_training(*args, **kwargs):
        raise AssertionError("retrained")
    monkeypatch.setattr(tokenizer_training, "train_sentencepiece", no_training)
    again = resolve_tokenizer(as_data_config(source=corpus, vocab_size=512), workdir)
    assert again.fingerprint() == tokenizer.fingerprint()
    with pytest.raises(AssertionError, match="retrained"):  # other settings: a new model is trained
        resolve_tokenizer(as_data_config(source=corpus, vocab_size=600), workdir)


def test_an_export_with_a_trained_sentencepiece_model_encodes_the_same_in_transformers(trained, tmp_path):
    import json

    import jax
    from transformers import AutoTokenizer

    from ctxjax import ModelConfig, init_params
    from ctxjax.hf import save_pretrained

    tokenizer, workdir = trained
    cfg = ModelConfig(vocab_size=512, d_model=16, n_layers=1, n_heads=2)
    out = save_pretrained(cfg, init_params(cfg, jax.random.PRNGKey(0)), str(tmp_path / "out"),
                          tokenizer=os.path.join(workdir, "tokenizer", "tokenizer.model"))
    config = json.load(open(os.path.join(out, "config.json")))
    special = (tokenizer.bos_id, tokenizer.eos_id)
    assert (config["bos_token_id"], config["eos_token_id"]) == special != (None, None)
    # transformers encodes as ctxjax trained (no dummy "▁" prefix), with BOS first as training documents
    # start.
    exported = AutoTokenizer.from_pretrained(out)
    for text in (SAMPLE, "  two leading spaces", "héllo ✓\n\tx"):
        assert exported(text).input_ids == [tokenizer.bos_id] + tokenizer.encode(text)
        assert exported.decode(tokenizer.encode(text)) == text


def test_existing_sentencepiece_model_loads_and_travels_to_the_workdir(trained, corpus, tmp_path):
    tokenizer, workdir = trained
    model_file = os.path.join(workdir, "tokenizer", "tokenizer.model")
    loaded = resolve_tokenizer(as_data_config(source=corpus, tokenizer=model_file), str(tmp_path))
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert load_tokenizer(str(tmp_path / "tokenizer")).fingerprint() == tokenizer.fingerprint()


def make_hf_tokenizer_json(directory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([SAMPLE] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = os.path.join(directory, "tokenizer.json")
    tok.save(path)
    return path


def test_hf_tokenizer_json_loads_and_feeds_the_pipeline(corpus, tmp_path):
    path = make_hf_tokenizer_json(str(tmp_path))
    tokenizer = load_tokenizer(str(tmp_path))
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (0, 1)
    assert tokenizer.decode(tokenizer.encode(SAMPLE)) == SAMPLE
    workdir = tmp_path / "work"
    pipe = make_pipeline(dict(source=corpus, tokenizer=path, prefetch=0), str(workdir), process_index=0,
                         process_count=1)
    batch = pipe.next_batch(2, 32)
    assert batch["tokens"][0, 0] == 0 and batch["tokens"].max() < tokenizer.vocab_size
    assert load_tokenizer(str(workdir / "tokenizer")).fingerprint() == tokenizer.fingerprint()


def test_a_replaced_tokenizer_leaves_none_of_its_files_behind_and_is_announced(corpus, tmp_path, caplog):
    """An imported model's tokenizer (tokenizer.json + companions) replaced by the run's: export must not find
    the old tokenizer_config.json and ship it as if it described the new one; and the log says it happened
    (the imported model's embeddings belong to the old one)."""
    directory = tmp_path / "work" / "tokenizer"
    directory.mkdir(parents=True)
    make_hf_tokenizer_json(str(directory))
    (directory / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    make_pipeline(dict(source=corpus, tokenizer="bytes", prefetch=0), str(tmp_path / "work"), process_index=0,
                  process_count=1)
    assert os.listdir(directory) == ["bytes_tokenizer.json"]
    assert "replacing the tokenizer" in caplog.text and "data.tokenizer=''" in caplog.text


def test_tokenizer_larger_than_the_model_vocabulary_is_an_error(trained, corpus):
    tokenizer, workdir = trained
    with pytest.raises(DataError, match="model's vocab_size is 300") as info:
        make_pipeline(dict(source=corpus, vocab_size=512), workdir, model_vocab_size=300, process_index=0,
                      process_count=1)
    assert "\n" not in str(info.value) and "data.vocab_size" in str(info.value)


def test_bad_tokenizer_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.model, tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "broken.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        load_tokenizer(str(tmp_path / "broken.model"))


def test_bytes_tokenizer_round_trips():
    tokenizer = load_tokenizer("bytes")
    assert tokenizer.decode(tokenizer.encode("héllo\n✓")) == "héllo\n✓"
