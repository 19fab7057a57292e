"""data_wait_s: the device's idle time waiting for batches, counted from when the step before finished (steps
are dispatched asynchronously), not from when the loop began waiting. A fake clock: nothing here is timed."""

import threading

from ctxjax.train.data_wait import IdleClock


class FakeStep:
    """A step's outputs that are ready once `finish()` is called (jax.block_until_ready calls the method)."""

    def __init__(self):
        self._done = threading.Event()

    def finish(self):
        self._done.set()

    def block_until_ready(self):
        self._done.wait(10)
        return self


class Time:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def finish_at(clock, time, when, step, outputs):
    """Step `step` finishes at `when` (the clock's thread notes it before time moves on)."""
    time.now = when
    outputs.finish()
    with clock._ready:
        assert clock._ready.wait_for(lambda: step in clock._finished, 10)


def test_only_the_time_after_the_step_before_finished_counts():
    time = Time()
    clock = IdleClock(timer=time)
    try:
        # Step 1: the first of the run waits on nothing (its wait is the start, not the pipeline).
        clock.begin_wait()
        time.now = 5.0
        clock.batch_ready(1)
        one = FakeStep()
        clock.dispatched(1, one)
        # Step 2's batch: the loop waits from 5.5; step 1 finishes at 7; the batch is ready at 9 -> 2 s idle.
        time.now = 5.5
        clock.begin_wait()
        finish_at(clock, time, 7.0, 1, one)
        time.now = 9.0
        clock.batch_ready(2)
        two = FakeStep()
        clock.dispatched(2, two)
        # Step 3's batch is ready (9.5) before step 2 finishes (12): the pipeline kept up, nothing idle.
        clock.begin_wait()
        time.now = 9.5
        clock.batch_ready(3)
        three = FakeStep()
        clock.dispatched(3, three)
        finish_at(clock, time, 12.0, 2, two)
        assert clock.take() == 2.0
        # Step 4: the loop was busy elsewhere (a checkpoint) until 20, after step 3 finished (13): only the
        # 1.5 s it then waited for the pipeline count.
        finish_at(clock, time, 13.0, 3, three)
        time.now = 20.0
        clock.begin_wait()
        time.now = 21.5
        clock.batch_ready(4)
        clock.dispatched(4, FakeStep())
        assert clock.take() == 1.5
        assert clock.take() == 0.0
    finally:
        clock._outputs.put(None)  # the last FakeStep never finishes: close() would wait for it


def test_a_reset_forgets_the_waits_of_a_compiling_step():
    time = Time()
    clock = IdleClock(timer=time)
    one = FakeStep()
    clock.dispatched(1, one)
    clock.begin_wait()
    finish_at(clock, time, 1.0, 1, one)
    time.now = 4.0
    clock.batch_ready(2)
    two = FakeStep()
    clock.dispatched(2, two)
    clock.reset()
    two.finish()
    assert clock.take() == 0.0
    clock.close()
    assert not clock._thread.is_alive()
