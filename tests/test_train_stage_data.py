"""A stage may read its own data source (`stages[i].data_source`): its pipeline shares the run's tokenizer,
starts that source from its beginning whatever happened before, and resumes from the checkpointed state
inside the stage exactly."""

import numpy as np
import pytest

from ctxjax.data import DataConfig, DataError, make_pipeline, open_source
from ctxjax.schedule import build_stages
from ctxjax.train.stage_data import StageData

PASSKEY = "retrieval:passkey:chars=60-70:docs=30"
DATA = DataConfig(source="stdlib", tokenizer="bytes", max_documents=20, prefetch=0, mode="crop")
STAGES = build_stages([dict(steps=2, seq_len=16, lr=1e-3),
                       dict(steps=3, seq_len=32, lr=1e-3, data_source=PASSKEY),
                       dict(steps=2, seq_len=32, lr=1e-3)], tokens_per_step=64)


def text(batch):
    return ["".join(chr(t) for t in row if 0 < t < 256) for row in batch["tokens"].tolist()]


def run(workdir, resumed_state=None, from_step=0):
    """{step: batch} of the stages from `from_step` on, and the data state after each step."""
    data = StageData(DATA, workdir, STAGES, 258, resumed_state)
    batches, states = {}, {}
    try:
        for stage in STAGES:
            for step in range(max(stage.start, from_step), stage.end):
                if step in (stage.start, from_step):
                    pipe = data.enter(stage, step)
                batches[step] = pipe.next_batch(stage.batch_size, stage.seq_len)
                states[step + 1] = data.pipe.global_state()
    finally:
        data.close()
    return batches, states


def test_a_stage_reads_its_own_source_and_a_switch_back_starts_over(tmp_path):
    batches, _ = run(str(tmp_path))
    passkey_text = "\n".join(open_source(PASSKEY).text(i) for i in range(30))
    assert all(t in passkey_text for step in (2, 3, 4) for t in text(batches[step]))
    assert not any(t in passkey_text for step in (0, 1, 5, 6) for t in text(batches[step]))
    # Stage 2 reads data.source again from its start, as a fresh pipeline does.
    with make_pipeline(DATA, str(tmp_path)) as fresh:
        np.testing.assert_array_equal(batches[5]["tokens"], fresh.next_batch(2, 32)["tokens"])


@pytest.mark.parametrize("resume_at", [1, 2, 3, 5, 6])  # inside a stage, and at both boundaries
def test_resuming_anywhere_gives_the_uninterrupted_batches(tmp_path, resume_at):
    want, states = run(str(tmp_path / "a"))
    got, _ = run(str(tmp_path / "b"), states[resume_at], from_step=resume_at)
    assert sorted(got) == list(range(resume_at, 7))
    for step in got:
        np.testing.assert_array_equal(got[step]["tokens"], want[step]["tokens"])


def test_a_checkpoint_inside_a_stage_that_now_reads_another_source_is_refused(tmp_path):
    _, states = run(str(tmp_path))
    data = StageData(DATA, str(tmp_path), STAGES, 258, states[1])  # saved inside stage 0 (stdlib)
    with pytest.raises(DataError, match="was reading data.source='stdlib:train', but stage 1 now reads"):
        data.enter(STAGES[1], 3)
    data.close()


def test_a_stage_source_must_be_a_spec():
    with pytest.raises(ValueError, match="stage 0: data_source=3 must be a data source spec"):
        build_stages([dict(steps=1, seq_len=16, lr=1e-3, data_source=3)], 64)
