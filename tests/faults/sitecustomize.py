"""Fault injection for tests/test_reliability_processes.py: a `ctxjax` process started with
PYTHONPATH=tests/faults and CTXJAX_FAULT set kills itself with SIGKILL at that moment, as a power cut or the
OOM killer would — no sleeping and no racing a timer.

    CTXJAX_FAULT=checkpoint:N   right after checkpoint step N's (async) save was started, while it is written
    CTXJAX_FAULT=export         in the middle of writing the Hugging Face export (config.json written, no
                                weights)
"""

import os
import signal

_FAULT = os.environ.get("CTXJAX_FAULT", "")


def _die(*_, **__):
    os.kill(os.getpid(), signal.SIGKILL)


if _FAULT.startswith("checkpoint:"):
    from ctxjax.checkpoint import manager

    _step = int(_FAULT.partition(":")[2])
    _save = manager.Checkpointer.save

    def _save_then_die(self, step, *args, **kwargs):
        started = _save(self, step, *args, **kwargs)
        if step == _step:
            _die()
        return started

    manager.Checkpointer.save = _save_then_die
elif _FAULT == "export":
    import ctxjax.hf

    ctxjax.hf.write_checkpoint = _die
