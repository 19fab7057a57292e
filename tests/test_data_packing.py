"""Packing and cropping: no token lost or duplicated, right segment ids and positions, PoSE, filters."""

import collections

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ctxjax.data import ByteTokenizer, DataError, ListSource, make_pipeline

BYTES = ByteTokenizer()
BOS, EOS = BYTES.bos_id, BYTES.eos_id


def pipeline(texts, **overrides):
    settings_ = dict(tokenizer="bytes", prefetch=0, seed=0)
    settings_.update(overrides)
    num_epochs = settings_.pop("num_epochs", None)
    return make_pipeline(settings_, None, source=ListSource(texts), process_index=0, process_count=1,
                         num_epochs=num_epochs)


def document_ids(text):
    return [BOS] + list(text.encode()) + [EOS]


def drain(pipe, shapes):
    """Batches for the given shapes, cycling through them until the finite stream ends."""
    out = []
    for i in range(10_000):
        try:
            out.append(pipe.next_batch(*shapes[i % len(shapes)]))
        except StopIteration:
            return out
    raise AssertionError("stream did not end")


def check_row_invariants(batch):
    tokens, positions, segments = batch["tokens"], batch["positions"], batch["segment_ids"]
    targets, weights = batch["targets"], batch["weights"]
    pad = segments == 0
    assert not weights[pad].any() and not tokens[pad].any() and not positions[pad].any()
    for row in range(tokens.shape[0]):
        for i in range(tokens.shape[1]):
            if pad[row, i]:
                continue
            starts_segment = i == 0 or segments[row, i - 1] != segments[row, i]
            if starts_segment:
                assert positions[row, i] == 0
            else:
                assert positions[row, i] == positions[row, i - 1] + 1
            continues = i + 1 < tokens.shape[1] and segments[row, i + 1] == segments[row, i]
            if weights[row, i] and continues:
                assert targets[row, i] == tokens[row, i + 1]  # the next token of the same document


texts_strategy = st.lists(st.text(alphabet="abcdefgh \n", max_size=50), min_size=1, max_size=10)
shapes_strategy = st.lists(st.tuples(st.integers(1, 3), st.integers(1, 17)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(texts=texts_strategy, shapes=shapes_strategy, seed=st.integers(0, 3),
       mode=st.sampled_from(["pack", "pack_whole"]))
def test_packing_emits_every_token_once_across_an_epoch(texts, shapes, seed, mode):
    """Whatever the (changing) batch shapes: inputs are exactly the documents' tokens, and weighted targets
    exactly the documents' tokens but the first of each."""
    batches = drain(pipeline(texts, seed=seed, num_epochs=1, mode=mode), shapes)
    documents = [document_ids(t) for t in texts]
    inputs = collections.Counter(t for b in batches for t in b["tokens"][b["segment_ids"] > 0].tolist())
    targets = collections.Counter(t for b in batches for t in b["targets"][b["weights"] > 0].tolist())
    assert inputs == collections.Counter(t for d in documents for t in d)
    assert targets == collections.Counter(t for d in documents for t in d[1:])
    for b in batches:
        check_row_invariants(b)


def test_pack_whole_never_cuts_a_document_that_fits_in_a_row():
    texts = ["a" * 5, "b" * 9, "c" * 3, "d" * 30, "e" * 12]  # 7, 11, 5, 32 and 14 tokens with BOS and EOS
    (batch,) = drain(pipeline(texts, shuffle=False, num_epochs=1, mode="pack_whole"), [(6, 16)])
    rows = [bytes(t for t in row if 0 < t < 256).decode() for row in batch["tokens"].tolist()]
    # b (11 tokens) does not fit after a (7): padding, and it starts the next row; d (32) is longer than a
    # row: cut.
    assert rows == ["a" * 5, "b" * 9 + "c" * 3, "d" * 15, "d" * 15, "e" * 12, ""]
    assert (batch["segment_ids"][0, 7:] == 0).all()
    check_row_invariants(batch)


def test_stream_is_the_documents_in_order_whatever_the_shapes():
    texts = ["first document", "second", "a third, longer document " * 3, "x"]
    batches = drain(pipeline(texts, shuffle=False, num_epochs=1), [(2, 7), (1, 13), (3, 4)])
    flat = [t for b in batches for t in b["tokens"][b["segment_ids"] > 0].tolist()]  # row-major
    assert flat == [t for text in texts for t in document_ids(text)]


def test_segment_ids_positions_and_targets_at_document_boundaries():
    pipe = pipeline(["ab", "cdef"], shuffle=False)
    a, b, c, d, e, f = (ord(ch) for ch in "abcdef")
    row0 = pipe.next_batch(1, 5)
    np.testing.assert_array_equal(row0["tokens"], [[BOS, a, b, EOS, BOS]])
    np.testing.assert_array_equal(row0["segment_ids"], [[1, 1, 1, 1, 2]])
    np.testing.assert_array_equal(row0["positions"], [[0, 1, 2, 3, 0]])
    np.testing.assert_array_equal(row0["targets"], [[a, b, EOS, 0, c]])
    np.testing.assert_array_equal(row0["weights"], [[1, 1, 1, 0, 1]])
    # The second document continues in the next row, restarting at position 0 with its own segment.
    row1 = pipe.next_batch(1, 5)
    np.testing.assert_array_equal(row1["tokens"], [[c, d, e, f, EOS]])
    np.testing.assert_array_equal(row1["segment_ids"], [[1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(row1["positions"], [[0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(row1["targets"], [[d, e, f, EOS, 0]])
    np.testing.assert_array_equal(row1["weights"], [[1, 1, 1, 1, 0]])
    assert row1["tokens"].dtype == np.int32 and row1["weights"].dtype == np.float32


def test_crop_gives_one_full_window_of_a_long_document_per_row():
    texts = ["short", "s" * 10] + [f"{i}" * 40 + "long document" for i in range(6)]
    seq_len = 16
    pipe = pipeline(texts, mode="crop", min_doc_tokens=seq_len + 1, num_epochs=1)
    batches = drain(pipe, [(2, seq_len)])
    rows = [(b["tokens"][r], b["targets"][r], b["weights"][r], b["segment_ids"][r], b["positions"][r])
            for b in batches for r in range(2)]
    assert len(rows) == 6  # one row per document that has at least seq_len + 1 tokens
    documents = [document_ids(t) for t in texts[2:]]
    for tokens, targets, weights, segments, positions in rows:
        assert weights.all() and (segments == 1).all()
        np.testing.assert_array_equal(positions, np.arange(seq_len))
        window = tokens.tolist() + [targets[-1]]
        assert any(_contains(d, window) for d in documents)


def _contains(sequence, window):
    return any(sequence[i:i + len(window)] == window for i in range(len(sequence) - len(window) + 1))


def test_crop_pads_a_short_document():
    pipe = pipeline(["abc"], mode="crop")
    batch = pipe.next_batch(1, 8)
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(batch["weights"], [[1, 1, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 3, 4, 0, 0, 0]])


def test_min_doc_tokens_filters_short_documents_when_packing():
    texts = ["tiny", "x" * 30, "mini", "y" * 40]
    batches = drain(pipeline(texts, min_doc_tokens=20, num_epochs=1), [(1, 16)])
    seen = {t for b in batches for t in b["tokens"][b["segment_ids"] > 0].tolist()}
    assert seen == {BOS, EOS, ord("x"), ord("y")}


@pytest.mark.parametrize("precompute", [True, False])
def test_no_document_long_enough_is_an_error_naming_the_fix(precompute):
    with pytest.raises(DataError, match="min_doc_tokens") as info:
        pipe = pipeline(["abc", "defg"], min_doc_tokens=100, precompute_tokens=precompute)
        pipe.next_batch(1, 8)
    assert "\n" not in str(info.value) and "longest has 6" in str(info.value)


@pytest.mark.parametrize("mode", ["pack", "crop"])
def test_pose_shifts_positions_but_not_tokens(mode):
    texts = [f"document {i} " * 8 for i in range(8)]
    plain = drain(pipeline(texts, mode=mode, num_epochs=1), [(2, 16)])
    posed = drain(pipeline(texts, mode=mode, num_epochs=1, pose_target_len=256, pose_chunks=3), [(2, 16)])
    jumped = False
    for p, q in zip(plain, posed, strict=True):
        for key in ("tokens", "targets", "weights", "segment_ids"):
            np.testing.assert_array_equal(p[key], q[key])
        segments, positions = q["segment_ids"], q["positions"]
        assert positions.max() < 256
        for row in range(segments.shape[0]):
            for i in range(segments.shape[1]):
                if segments[row, i] == 0:
                    continue
                if i == 0 or segments[row, i - 1] != segments[row, i]:
                    assert positions[row, i] == 0  # a segment still starts at 0
                else:
                    step = positions[row, i] - positions[row, i - 1]
                    assert step >= 1
                    jumped |= step > 1
    assert jumped
