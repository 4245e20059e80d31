"""A per-rank watchdog for hangs: no completed step within `train.watchdog_seconds` -> every thread's stack
to stderr (faulthandler), then exit with status 3, so the job fails instead of waiting forever in a
collective and the launcher's crash path (requeue, or the chain stops) takes over.

Long phases that are not steps (evaluation, checkpoint saves, the first step's warm-up) call `beat()` when
they end; a run that is legitimately slower than the limit needs a larger limit, not a pause. Off by
default (0): the right limit depends on the model, the layout and the file system.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)
EXIT_STATUS = 3


class Watchdog:
    def __init__(self, timeout_s: float, what: str = "training step"):
        self.timeout_s, self.what = timeout_s, what
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = None
        if timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="megatron_qwen-watchdog", daemon=True)
            self._thread.start()

    def beat(self) -> None:
        """Progress was made: the clock starts again."""
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(min(1.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                message = (f"watchdog: no {self.what} completed for {idle:.0f} s (train.watchdog_seconds="
                           f"{self.timeout_s:g}); the stack of every thread follows, then exit {EXIT_STATUS}")
                print(message, file=sys.stderr, flush=True)
                log.error(message)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(EXIT_STATUS)
