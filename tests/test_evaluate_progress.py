"""Progress bars of evaluations and generation (drawn on a terminal only) and the throughput they record."""

import io

import jax
import numpy as np

from ctxjax.config import ModelConfig
from ctxjax.execution import ExecutionConfig
from ctxjax.evaluate.perplexity import perplexity_by_length
from ctxjax.evaluate.progress import Meter, Progress, throughput_lines
from ctxjax.evaluate.retrieval import Prompt, Trial, run_grid
from ctxjax.generate import generate
from ctxjax.model import Transformer


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_are_drawn_per_task_and_length_with_the_time_left_on_a_terminal_only():
    def trial(length, depth, rng):
        return Trial(Prompt([1] * length, 0, 0, length), "7")

    terminal = Terminal()
    run_grid(trial, lambda out, expected: out == expected, lambda prompts, n: ["7"] * len(prompts),
             lengths=[8, 16], depths=[0.0, 1.0], trials=3, answer_tokens=2, batch_size=4, seed=0,
             progress=Progress(terminal), name="passkey")
    drawn = terminal.getvalue()
    for length in (8, 16):
        assert f"passkey {length}: 100%" in drawn and "6/6 [" in drawn  # 2 depths x 3 trials
    assert "<" in drawn and "prompt/s" in drawn  # elapsed<left, and the rate

    docs = [np.arange(40) % 7]
    terminal = Terminal()
    perplexity_by_length(docs, [8], lambda n: lambda rows: np.ones((len(rows), rows.shape[1] - 1)),
                         methods=("nonoverlapping", "sliding"), stride=4, target_tokens=4, bucket_size=None,
                         max_windows=100, chunk=2, progress=Progress(terminal))
    assert "ppl 8: 100%" in terminal.getvalue() and "window/s" in terminal.getvalue()

    piped = io.StringIO()  # a file or pipe (and pytest's capture): nothing drawn
    Progress.on_terminal(piped).bar("passkey 8", total=3).update(3)
    assert piped.getvalue() == "" and not Progress.on_terminal(piped).enabled
    terminal = Terminal()  # training's stage-end evaluation: bars cleared when done
    Progress.on_terminal(terminal, leave=False).bar("ppl 8", total=2).update(2)
    assert "ppl 8" in terminal.getvalue()


def test_meter_records_tokens_and_rates_per_task():
    now = iter([0.0, 2.0, 10.0, 14.0])
    meter = Meter(clock=lambda: next(now))
    with meter.task("ppl"):
        meter.add(scored=1000)
    with meter.task("passkey"):
        meter.add(scored=300, generated=40)
    meter.add(scored=5)  # outside a task: not counted
    summary = meter.summary()
    assert summary["tasks"]["ppl"] == {"wall_s": 2.0, "tokens_scored": 1000, "tokens_generated": 0,
                                       "scored_per_s": 500.0, "generated_per_s": 0.0}
    assert summary["tasks"]["passkey"]["generated_per_s"] == 10.0
    assert summary["total"]["tokens_scored"] == 1300 and summary["total"]["wall_s"] == 6.0
    table = "\n".join(throughput_lines(summary))
    assert "## Throughput" in table and "| ppl | 2.0 | 1,000 | 500 | 0 | 0 |" in table and "| all |" in table


def test_generate_reports_each_token_to_the_host():
    cfg = ModelConfig(vocab_size=17, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16)
    params = Transformer(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"]
    seen = []
    out = generate(cfg, params, [[1, 2, 3]], 5, pad_to_multiple=4, on_token=lambda n: seen.append(int(n)),
                   execution=ExecutionConfig(attention="xla"))
    jax.effects_barrier()
    assert seen == [2, 3, 4, 5] and len(out.sequences[0]) == 5  # the first token comes with the prefill
