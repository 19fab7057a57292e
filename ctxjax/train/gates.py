"""Stage gates: conditions on a stage's stage-end evaluation that decide whether the run moves on to the next
stage, trains the stage `extend_steps` more steps (at most `max_extensions` times), or stops.

    stages[i] = dict(..., gate=dict(metric="passkey/acc", length="seq_len", min=0.9),
                     extend_steps=50, max_extensions=2)

`schedule.build_stages` reads the gate's fields, `check_config` that the evaluation measures what it names,
`check` the metrics after the evaluation. A gate never changes what a step trains on: an extension continues
the stage's data stream at the floor of its learning rate, and its steps are recorded in the checkpoint meta
(`stage_extensions`) so that a resumed run lays the stages out again exactly.
"""

from __future__ import annotations

import dataclasses
import math

from ctxjax.errors import GateFailed, InputError
from ctxjax.evaluate.config import as_eval_config
from ctxjax.evaluate.report import metrics_by_length
from ctxjax.schedule import Gate, Stage


@dataclasses.dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float  # the metric, or its ratio to the metric at gate.ratio_to
    passed: bool

    def describe(self) -> str:
        """e.g. 'eval/passkey/acc/64 = 0.25 (needs >= 0.9)'."""
        return f"{self.gate.name()} = {self.value:.4g} (needs {self.gate.bounds()})"


def check_config(config, stages: list[Stage]) -> None:
    """One line, before anything trains, for a gate the stage-end evaluation cannot decide: no evaluation, a
    metric its tasks do not measure, a length it does not evaluate."""
    gated = [s for s in stages if s.gates]
    if not gated:
        return
    if not config.eval_at_stage_end:
        raise InputError(f"stage {gated[0].index} has a gate, which the stage-end evaluation decides; set "
                         "--config.eval_at_stage_end=True (and eval.tasks / eval.lengths to measure it)")
    eval_config = as_eval_config(config.eval)
    measured = metrics_by_length(eval_config)
    lengths = eval_config.lengths
    for stage in gated:
        for gate in stage.gates:
            if gate.metric not in measured:
                raise InputError(f"stage {stage.index}: gate metric {gate.metric!r} is not measured by "
                                 f"eval.tasks={list(eval_config.tasks)} (ppl_methods="
                                 f"{list(eval_config.ppl_methods)}); it measures {list(measured)}")
            missing = [n for n in (gate.length, gate.ratio_to) if n is not None and n not in (lengths or ())]
            if missing:
                raise InputError(f"stage {stage.index}: gate on {gate.metric} reads length(s) {missing}, "
                                 f"which eval.lengths={list(lengths) if lengths else None} does not list; "
                                 "list the lengths a gate reads, e.g. "
                                 f"--config.eval.lengths={_with(lengths, missing)}")


def _with(lengths, missing) -> str:
    return ",".join(str(n) for n in sorted({*(lengths or ()), *missing}))


def check(stage: Stage, metrics: dict, step: int) -> list[GateResult]:
    """Every gate of `stage` against the stage-end evaluation's flat metrics (a NaN fails). A metric the
    evaluation did not produce (a length it skipped) is one line naming it."""
    results = []
    for gate in stage.gates:
        values = []
        for key in gate.keys():
            if key not in metrics:
                raise InputError(f"stage {stage.index}: the evaluation at step {step} gave no {key}, which "
                                 f"its gate reads (a skipped length? see eval/step_{step}/summary.md); the "
                                 "checkpoint is saved: change the gate or the evaluation and rerun")
            values.append(float(metrics[key]))
        value = values[0]
        if len(values) == 2:
            value = values[0] / values[1] if values[1] else math.nan
        passed = math.isfinite(value) and (gate.min is None or value >= gate.min) \
            and (gate.max is None or value <= gate.max)
        results.append(GateResult(gate, value, passed))
    return results


def decide(stage: Stage, metrics: dict, step: int, writer) -> bool:
    """Check `stage`'s gates after its evaluation, log the verdict (a `gate/...` record and a progress line
    through the MetricsWriter `writer`); True: extend the stage. Raises GateFailed when a gate fails and the
    stage may not be extended (again)."""
    results = check(stage, metrics, step)
    passed = all(r.passed for r in results)
    extend = not passed and stage.extensions < stage.max_extensions
    writer.write(step, record(stage, results))
    writer.note(summary_line(stage, step, results, extend))
    if not passed and not extend:
        raise failure(stage, step, results)
    return extend


def record(stage: Stage, results: list[GateResult]) -> dict:
    """The gate's line in metrics.jsonl: its values by name, and whether all passed."""
    out = {"gate/stage": stage.index, "gate/passed": all(r.passed for r in results),
           "gate/extensions": stage.extensions}
    for r in results:
        name = r.gate.keys()[0][len("eval/"):]
        out[f"gate/{name}" + (f"/ratio_to_{r.gate.ratio_to}" if r.gate.ratio_to else "")] = r.value
    return out


def summary_line(stage: Stage, step: int, results: list[GateResult], extending: bool) -> str:
    """The progress line: 'stage 1 gate at step 40: eval/passkey/acc/64 = 0.25 (needs >= 0.9): failed;
    extending...'."""
    passed = all(r.passed for r in results)
    verdict = "passed" if passed else "failed"
    if extending:
        verdict += (f"; training {stage.extend_steps} more steps at seq_len {stage.seq_len} (extension "
                    f"{stage.extensions + 1} of {stage.max_extensions})")
    return f"stage {stage.index} gate at step {step}: {'; '.join(r.describe() for r in results)}: {verdict}"


def failure(stage: Stage, step: int, results: list[GateResult]) -> GateFailed:
    """The one line a run stops with (its checkpoint at `step` already saved)."""
    failed = "; ".join(r.describe() for r in results if not r.passed)
    after = f" after {stage.extensions} extension(s) of the stage" if stage.extensions else ""
    fix = (f"a higher --config.stages.{stage.index}.max_extensions" if stage.extend_steps
           else f"--config.stages.{stage.index}.extend_steps=N (train the stage longer)")
    return GateFailed(f"stage {stage.index} (seq_len {stage.seq_len}) gate failed at step {step}{after}: "
                      f"{failed}; the checkpoint at step {step} is saved: to go on from it, rerun with the "
                      f"gate changed (--config.stages.{stage.index}.gate.FIELD=VALUE, or gate.N.FIELD in a "
                      f"list of gates) or with {fix}")


def extended(extensions: dict, stage: Stage) -> dict:
    """The run's `stage_extensions` with one more extension of `stage`."""
    return {**extensions, str(stage.index): {"extensions": stage.extensions + 1,
                                             "steps": stage.extra_steps + stage.extend_steps}}


def gated_end(stages: list[Stage], step: int) -> Stage | None:
    """The gated stage that ends at `step` (a run resumed there decides its gate before going on)."""
    return next((s for s in stages if s.gates and s.end == step and step > 0), None)
