"""The MLM objective as data (ctxjax/data/masking.py): which positions are masked, how they are replaced, that
the masks are a function of the seed and the row's place in the stream (so a resumed run sees the same
ones), and the mask token every MLM tokenizer needs."""

import json

import numpy as np
import pytest

from ctxjax.data import DataError, load_tokenizer, make_pipeline
from ctxjax.data.masking import Masker
from ctxjax.data.tokenizer_training import train_sentencepiece

SCHEDULE = [(4, 64)] * 3 + [(2, 128)] * 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "(", ")", ":", "\n", "    "]
    for i in range(24):
        (root / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, int(rng.integers(5, 120)))))
    return f"text:{root}/*.txt"


def mlm(corpus, **overrides):
    return {**dict(source=corpus, tokenizer="bytes+mask", seed=1, prefetch=0, objective="mlm"), **overrides}


def batches(cfg, workdir, schedule=SCHEDULE):
    with make_pipeline(cfg, workdir, process_index=0, process_count=1) as pipe:
        return [pipe.next_batch(*shape) for shape in schedule]


def test_masks_text_tokens_at_the_rate_with_bert_replacement(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 256, (64, 512)).astype(np.int32)
    tokens[:, 0], tokens[:, 300] = 256, 257  # BOS / EOS never masked
    segments = np.ones_like(tokens)
    segments[:, 400:] = 0  # padding never masked
    batch = {"tokens": tokens.copy(), "segment_ids": segments, "targets": np.zeros_like(tokens),
             "weights": np.zeros(tokens.shape, np.float32), "positions": np.zeros_like(tokens)}
    masker = Masker(258, (256, 257), 259, rate=0.15)
    for row in range(len(tokens)):
        masker.apply(batch, row, (0, 0, row))
    chosen = batch["weights"] > 0
    assert not chosen[:, 400:].any() and not chosen[:, 0].any() and not chosen[:, 300].any()
    assert abs(chosen.sum() / (64 * 398) - 0.15) < 0.01
    np.testing.assert_array_equal(batch["targets"][chosen], tokens[chosen])  # the originals are the targets
    np.testing.assert_array_equal(batch["tokens"][~chosen], tokens[~chosen])  # nothing else changes
    replaced = batch["tokens"][chosen]
    as_mask = (replaced == 258).mean()
    unchanged = (replaced == tokens[chosen]).mean()  # "keep" plus random draws that hit the same token
    assert abs(as_mask - 0.8) < 0.03 and abs(unchanged - 0.1) < 0.03
    assert replaced[replaced != 258].max() < 256  # random replacements are ordinary tokens


def test_mlm_batches_put_the_loss_on_masked_positions_only(corpus, tmp_path):
    plain = batches(dict(mlm(corpus), objective="next_token", tokenizer="bytes"), str(tmp_path / "a"))
    masked = batches(mlm(corpus, mask_rate=0.3), str(tmp_path / "b"))
    chosen_total = text_total = 0
    for p, m in zip(plain, masked):
        np.testing.assert_array_equal(p["segment_ids"], m["segment_ids"])  # same packing
        np.testing.assert_array_equal(p["positions"], m["positions"])
        chosen = m["weights"] > 0
        original = np.where(chosen, m["targets"], m["tokens"])
        np.testing.assert_array_equal(original, p["tokens"])  # the input text, restored
        assert not np.isin(m["targets"][chosen], (256, 257)).any()
        assert not chosen[m["segment_ids"] == 0].any()
        chosen_total, text_total = chosen_total + chosen.sum(), text_total + (m["segment_ids"] > 0).sum()
    assert 0.27 < chosen_total / text_total < 0.33


def test_masks_are_deterministic_and_a_resumed_run_sees_the_same(corpus, tmp_path):
    cfg = mlm(corpus)
    first = batches(cfg, str(tmp_path))
    again = batches(cfg, str(tmp_path))
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with make_pipeline(cfg, str(tmp_path), process_index=0, process_count=1) as pipe:
        for shape in SCHEDULE[:4]:
            pipe.next_batch(*shape)
        saved = json.dumps(pipe.state())
    with make_pipeline(cfg, str(tmp_path), process_index=0, process_count=1) as pipe:
        pipe.restore(json.loads(saved))
        resumed = [pipe.next_batch(*shape) for shape in SCHEDULE[4:]]
    for a, b in zip(first[4:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    other_seed = batches(mlm(corpus, seed=2), str(tmp_path / "s"))
    assert not np.array_equal(first[0]["weights"], other_seed[0]["weights"])


def test_a_tokenizer_without_a_mask_token_is_one_line_with_the_fix(corpus, tmp_path):
    with pytest.raises(DataError, match="no mask token.*'bytes\\+mask' instead of 'bytes'"):
        make_pipeline(mlm(corpus, tokenizer="bytes"), str(tmp_path))


@pytest.mark.parametrize("bad", [dict(objective="bert"), dict(mask_rate=0.0), dict(mask_replace=(0.5, 0.5))])
def test_bad_mlm_settings(corpus, tmp_path, bad):
    with pytest.raises(DataError, match="data.(objective|mask_rate|mask_replace)="):
        make_pipeline(mlm(corpus, **bad), str(tmp_path))


def test_byte_tokenizer_with_mask_saves_and_loads(tmp_path):
    tokenizer = load_tokenizer("bytes+mask")
    assert (tokenizer.mask_id, tokenizer.vocab_size) == (258, 259)
    tokenizer.save(str(tmp_path))
    assert load_tokenizer(str(tmp_path)).mask_id == 258
    assert load_tokenizer("bytes").mask_id is None
    assert load_tokenizer("bytes").fingerprint() != tokenizer.fingerprint()


def test_trained_sentencepiece_gets_a_mask_token_only_for_mlm():
    texts = ["def f(x):\n    return x + 1\n" * 20, "alpha beta gamma delta " * 50]
    plain, with_mask = train_sentencepiece(iter(texts), 300), train_sentencepiece(iter(texts), 300, True)
    assert plain.mask_id is None and with_mask.mask_id is not None
    assert with_mask.mask_id in with_mask.special_ids and with_mask.bos_id in with_mask.special_ids
    assert with_mask.mask_id not in with_mask.encode("a <mask> b")  # a control piece: text never makes it
    assert with_mask.hf_config()["mask_token"] == "<mask>"


def test_an_hf_tokenizer_finds_its_mask_token_and_every_special(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "ab"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(str(tmp_path))
    assert (loaded.mask_id, loaded.pad_id) == (4, 0)
    assert set(loaded.special_ids) == {0, 1, 2, 3, 4}
