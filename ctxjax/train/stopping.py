"""Stopping a run without losing it: SIGTERM (a preemptible TPU VM's notice) and the first Ctrl-C ask the loop
to save a checkpoint after the current step and exit cleanly; a second Ctrl-C stops at once (what was saved
before stays)."""

from __future__ import annotations

import signal
import sys


class StopRequests:
    """A context manager whose `requested` turns True on SIGTERM or the first SIGINT."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (a notebook's worker): no handler, signals act as before
                pass
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait for the save
        self.requested = True
        if signum == signal.SIGINT:
            print("\nCtrl-C: saving a checkpoint after this step, then stopping "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
