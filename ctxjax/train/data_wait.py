"""How long the device sat idle waiting for the data pipeline (the loop's `data_wait_s`).

JAX dispatches a step asynchronously, so the loop usually asks for the next batch while the step before it
still runs: the time the loop itself spends blocked on the pipeline is not lost unless that step has finished.
The idle time of a step is therefore counted from the later of "the loop began waiting for its batch" and
"the step before it finished" to "its batch was ready to dispatch" (the batch made global included). A thread
notes when each step's outputs are ready (steps run in order, so it waits on them in order); the loop reads
the totals only at its log interval, where it synchronises anyway.

    clock = IdleClock()
    clock.begin_wait()                      # before pipe.next_batch(...)
    clock.batch_ready(step)                 # batch in hand, before dispatching step `step`
    clock.dispatched(step, step_metrics)    # its outputs: the clock notes when they are ready
    idle = clock.take()                     # seconds idle since the last take(), at a log interval
"""

from __future__ import annotations

import queue
import threading
import time

import jax


class IdleClock:
    def __init__(self, timer=time.perf_counter):
        self._timer = timer
        self._outputs: queue.SimpleQueue = queue.SimpleQueue()
        self._finished: dict[int, float] = {}  # step -> when its outputs were ready
        self._ready = threading.Condition()
        self._waits: list[tuple[int, float, float]] = []  # (step, began waiting, batch ready)
        self._began: float | None = None
        self._last_dispatched: int | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True, name="ctxjax-step-clock")
        self._thread.start()

    def _watch(self) -> None:
        while (item := self._outputs.get()) is not None:
            step, outputs = item
            try:
                jax.block_until_ready(outputs)
            except Exception:  # noqa: BLE001 - a failed step raises in the loop; here it has just ended
                pass
            with self._ready:
                self._finished[step] = self._timer()
                self._ready.notify_all()

    def begin_wait(self) -> None:
        self._began = self._timer()

    def batch_ready(self, step: int) -> None:
        """The batch of global step `step` (the step that ends with state["step"] == step) is ready."""
        # Only a step after one this clock saw dispatched can wait on it (not the first step of a run).
        if self._began is not None and self._last_dispatched == step - 1:
            self._waits.append((step, self._began, self._timer()))
        self._began = None

    def dispatched(self, step: int, outputs) -> None:
        self._last_dispatched = step
        self._outputs.put((step, outputs))

    def reset(self) -> None:
        """Forget the waits so far (e.g. those of a step that compiled: its time is not a data wait)."""
        self._waits = []

    def take(self, timeout: float = 60.0) -> float:
        """Seconds the device waited for batches since the last take() or reset(). Called after the loop has
        fetched the interval's metrics, so every step before the last is finished (or soon noted as such)."""
        idle = 0.0
        for step, began, ready in self._waits:
            with self._ready:
                self._ready.wait_for(lambda: step - 1 in self._finished, timeout)
                finished = self._finished.get(step - 1)
            if finished is not None:
                idle += max(0.0, ready - max(began, finished))
        with self._ready:
            last = max((s for s, _, _ in self._waits), default=None)
            if last is not None:  # keep the interval's last step: the next interval's first wait needs it
                self._finished = {s: t for s, t in self._finished.items() if s >= last}
        self._waits = []
        return idle

    def close(self) -> None:
        self._outputs.put(None)
        # A daemon: an interrupted run does not wait here for a long step still running.
        self._thread.join(timeout=5)
