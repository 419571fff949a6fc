"""Bounded capture of a worker's stdout and stderr: a flood costs no memory and never blocks the child."""

from __future__ import annotations

import os
import select
import threading
from dataclasses import dataclass
from typing import IO

_READ_CHUNK = 64 * 1024
_READS_PER_TURN = 16  # then let a snapshot in, even while a flood goes on


@dataclass(frozen=True)
class CapturedOutput:
    """What a stream carried: its first and last bytes, and how many bytes it carried in all."""

    head: bytes = b""
    tail: bytes = b""
    total_bytes: int = 0

    @property
    def truncated(self) -> bool:
        return self.total_bytes > len(self.head) + len(self.tail)

    def text(self) -> str:
        """The kept bytes as text, with a marker where the middle was dropped."""
        head = self.head.decode("utf-8", errors="backslashreplace")  # bytes that are not UTF-8 shown, not lost
        tail = self.tail.decode("utf-8", errors="backslashreplace")
        if not self.truncated:
            return head + tail
        omitted = self.total_bytes - len(self.head) - len(self.tail)
        return f"{head}\n[... {omitted} bytes omitted ...]\n{tail}"

    def last_lines(self, max_chars: int) -> str:
        """At most `max_chars` characters from the end of the stream, cut at a line start where possible."""
        text = self.text()
        if len(text) <= max_chars:
            return text
        cut = text[-max_chars:]
        newline = cut.find("\n")
        return cut[newline + 1:] if 0 <= newline < max_chars // 2 else cut


class OutputCapture:
    """Drains one pipe on a daemon thread, keeping `keep_bytes` of it (first half head, second half tail).

    `snapshot` first reads what is waiting in the pipe, so it includes everything the writer wrote
    before the moment it is called, even if the thread has not caught up yet.
    """

    def __init__(self, stream: IO[bytes], keep_bytes: int, name: str) -> None:
        self._stream = stream
        self._fd = stream.fileno()
        os.set_blocking(self._fd, False)
        self._head_limit = keep_bytes // 2
        self._tail_limit = keep_bytes - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0
        self._ended = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, name=f"sandbox-{name}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            poller.poll()
            with self._lock:
                self._read_waiting()
                if self._ended:
                    return

    def _read_waiting(self) -> None:
        """Read what the pipe holds now, a bounded amount at a time. Holds the lock."""
        for _ in range(_READS_PER_TURN):
            if self._ended:
                return
            try:
                chunk = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._ended = True
                return
            self._keep(chunk)

    def _keep(self, chunk: bytes) -> None:
        self._total += len(chunk)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail += chunk[-self._tail_limit:]
            del self._tail[:-self._tail_limit]

    def snapshot(self) -> CapturedOutput:
        with self._lock:
            self._read_waiting()
            return CapturedOutput(bytes(self._head), bytes(self._tail), self._total)

    def finish(self, timeout_s: float) -> None:
        """Wait for the end of the stream (every writer gone), then close our end."""
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._stream.close()
