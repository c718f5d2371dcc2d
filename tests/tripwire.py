"""A FIFO tripwire for tests of code that must never open a FIFO for reading (it would wait forever)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path


class FifoTripwire:
    """A FIFO that records whether anyone opened it for reading, and then unblocks them.

    A reader that opens a FIFO without `O_NONBLOCK` waits until a writer appears (see fifo(7)); this thread
    polls with a non-blocking write open, which succeeds only while a reader has the FIFO open, writes a few
    bytes and closes, so the reader gets data and EOF. A regression therefore fails `opened` instead of
    hanging the test run.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno not in (errno.ENXIO, errno.ENOENT):
                    raise
                self._stop.wait(0.02)
                continue
            self.opened.set()
            try:
                os.write(fd, b"FIFO-WAS-READ")
            except BlockingIOError:
                pass
            finally:
                os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
