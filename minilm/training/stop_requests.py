"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, stop.

The trainer polls `trainer._stop_requested` at each step boundary (and broadcasts it to the other
processes), so a stop never leaves a half-taken optimizer step behind.
"""
from __future__ import annotations

import signal
import threading


class StopRequests:
    """While training, Ctrl-C / SIGTERM ask the loop to checkpoint and stop at the next step boundary.

    A second Ctrl-C interrupts at once (KeyboardInterrupt), for a loop that is stuck.
    """

    def __init__(self, trainer):
        self.trainer, self.previous = trainer, {}

    def _handler(self, signum, frame):
        if self.trainer._stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.trainer._stop_requested = True
        self.trainer.log(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
                         "(Ctrl-C again to quit at once)")

    def __enter__(self):
        """Install the handler, keeping whatever was there to put back on exit: Python's Ctrl-C
        handler in a terminal, SIG_IGN under nohup or a CI runner, an application's own handler."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(sig)
                if previous is None:  # installed outside Python: it could not be put back, so leave it
                    continue
                self.previous[sig] = previous
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
