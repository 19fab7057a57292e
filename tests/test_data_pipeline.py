"""The iterator: deterministic from the seed, a JSON-able state that resumes exactly, shape changes."""

import json

import numpy as np
import pytest

from ctxjax.data import DataError, make_eval_pipeline, make_pipeline, open_source

# Shapes change between "stages", as the staged schedule does.
SCHEDULE = [(4, 32)] * 3 + [(2, 64)] * 3 + [(8, 16)] * 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "(", ")", ":", "\n", "    "]
    for i in range(24):
        n = int(rng.integers(5, 120))
        (root / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, n)))
    return f"text:{root}/*.txt"


def config(corpus, **overrides):
    values = dict(source=corpus, tokenizer="bytes", seed=1, prefetch=2)
    values.update(overrides)
    return values


def run(pipe, shapes):
    return [pipe.next_batch(*shape) for shape in shapes]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


VARIANTS = {
    "pack": {}, "crop": dict(mode="crop"), "pose": dict(pose_target_len=512),
    "lazy": dict(precompute_tokens=False), "two_shards": dict(num_shards=2), "no_prefetch": dict(prefetch=0),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_restored_run_yields_the_batches_of_the_uninterrupted_run(corpus, tmp_path, variant):
    cfg = config(corpus, **VARIANTS[variant])
    with make_pipeline(cfg, str(tmp_path), process_index=0, process_count=1) as pipe:
        uninterrupted = run(pipe, SCHEDULE)
    for stop in (2, 4, 7):  # inside a stage, right after a shape change, in the last stage
        with make_pipeline(cfg, str(tmp_path), process_index=0, process_count=1) as pipe:
            run(pipe, SCHEDULE[:stop])
            saved = json.dumps(pipe.state())  # what a checkpoint stores
            run(pipe, SCHEDULE[stop:stop + 1])  # the interrupted run went on a little before it died
        assert len(saved) < 1000
        with make_pipeline(cfg, str(tmp_path), process_index=0, process_count=1) as resumed:
            resumed.restore(json.loads(saved))
            assert_same_batches(run(resumed, SCHEDULE[stop:]), uninterrupted[stop:])


def test_same_seed_same_batches_other_seed_other_batches(corpus):
    def batches(**overrides):
        with make_pipeline(config(corpus, **overrides), None, process_index=0, process_count=1) as pipe:
            return run(pipe, SCHEDULE[:3])
    assert_same_batches(batches(), batches())
    assert_same_batches(batches(), batches(prefetch=0))  # the background thread changes nothing
    assert not np.array_equal(batches()[0]["tokens"], batches(seed=2)[0]["tokens"])


def test_shards_of_two_processes_make_the_single_process_batch(corpus):
    cfg = config(corpus, num_shards=2)
    with make_pipeline(cfg, None, process_index=0, process_count=1) as single:
        expected = run(single, SCHEDULE)
    parts = []
    for index in range(2):
        with make_pipeline(cfg, None, process_index=index, process_count=2) as pipe:
            parts.append(run(pipe, SCHEDULE))
    for step, batch in enumerate(expected):
        for key in batch:
            joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key])


def test_state_of_another_configuration_is_refused(corpus):
    with make_pipeline(config(corpus), None, process_index=0, process_count=1) as pipe:
        pipe.next_batch(2, 8)
        saved = pipe.state()
    with make_pipeline(config(corpus, seed=5), None, process_index=0, process_count=1) as other:
        with pytest.raises(DataError, match="data.seed"):
            other.restore(saved)
    # The same source spec over fewer documents: the cursors would point into another order.
    with make_pipeline(config(corpus, max_documents=3), None, process_index=0, process_count=1) as other:
        with pytest.raises(DataError, match="saved over .* documents.*restore data.max_documents"):
            other.restore(saved)


def test_batch_size_must_divide_among_shards(corpus):
    cfg = config(corpus, num_shards=2, prefetch=0)
    with make_pipeline(cfg, None, process_index=0, process_count=1) as pipe:
        with pytest.raises(DataError, match="multiple of data.num_shards=2"):
            pipe.next_batch(3, 8)


def test_shards_must_divide_among_processes(corpus):
    with pytest.raises(DataError, match="multiple of 2"):
        make_pipeline(config(corpus, num_shards=3), None, process_index=0, process_count=2)


def test_config_accepts_config_dicts_and_rejects_unknown_fields(corpus):
    import ml_collections

    cfg = ml_collections.ConfigDict(config(corpus))
    with make_pipeline(cfg, None, process_index=0, process_count=1) as pipe:
        assert pipe.next_batch(1, 8)["tokens"].shape == (1, 8)
    with pytest.raises(DataError, match="unknown data config field"):
        make_pipeline(config(corpus, seq_length=3), None)


def test_eval_pipeline_reads_the_held_out_documents_once_in_order():
    config = dict(tokenizer="bytes", add_bos=False, add_eos=False, max_documents=3)
    with make_eval_pipeline(config, None, process_index=0, process_count=1) as pipe:
        batches = list(pipe.batches(2, 512))
    held_out = open_source("stdlib:eval")
    expected = "".join(held_out.text(i) for i in range(3)).encode()
    assert bytes(t for b in batches for t in b["tokens"][b["segment_ids"] > 0].tolist()) == expected


def test_errors_in_the_background_thread_reach_the_caller(corpus):
    with make_pipeline(config(corpus, min_doc_tokens=10_000, precompute_tokens=False), None,
                       process_index=0, process_count=1) as pipe:
        with pytest.raises(DataError, match="min_doc_tokens=10000"):
            pipe.next_batch(2, 16)


def data_threads():
    """The prefetch threads alive now (other tests' unclosed pipelines may leave theirs: compare sets)."""
    import threading

    return {t for t in threading.enumerate() if t.name == "ctxjax-data" and t.is_alive()}


def test_the_error_raised_is_the_threads_own_and_the_thread_is_gone(corpus):
    import traceback

    before = data_threads()
    with make_pipeline(config(corpus, min_doc_tokens=10_000, precompute_tokens=False), None,
                       process_index=0, process_count=1) as pipe:
        with pytest.raises(DataError) as raised:
            pipe.next_batch(2, 16)
        assert not data_threads() - before
    # The original exception object, with the frames where the thread raised it.
    assert "_produce" in [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]


def test_an_interrupt_in_the_caller_stops_the_thread(corpus):
    """Ctrl-C (or any error) in the training loop while the thread waits on a full queue: none is left."""
    before = data_threads()
    with pytest.raises(KeyboardInterrupt):
        with make_pipeline(config(corpus), None, process_index=0, process_count=1) as pipe:
            pipe.next_batch(2, 16)
            assert data_threads() - before
            raise KeyboardInterrupt
    assert not data_threads() - before
