"""A progress bar on stderr for long work (`up`, `apply`); plain lines when
stderr is not a terminal, so logs and CI output stay readable."""
from __future__ import annotations

import sys
import time

WIDTH = 28


class Progress:
    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.title, self.total, self.done, self.text = "", 0, 0, ""
        self.t0 = time.monotonic()
        self._last_line = ""

    def note(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"{text}\n")
            self.stream.flush()

    def start(self, title: str, total: int) -> None:
        self.title, self.total, self.done, self.text = title, max(total, 1), 0, ""
        self.t0 = time.monotonic()
        self._draw()

    def advance(self, n: int = 1, text: str = "") -> None:
        self.update(self.done + n, text)

    def update(self, done: int, text: str = "") -> None:
        if done != self.done or text != self.text:
            self.done, self.text = done, text
            self._draw()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        if not self.enabled:
            return
        filled = WIDTH * min(self.done, self.total) // self.total
        bar = "#" * filled + "." * (WIDTH - filled)
        line = f"{self.title:<18} [{bar}] {self.done}/{self.total} {self.text}".rstrip()
        elapsed = f" {time.monotonic() - self.t0:5.1f}s"
        if self.tty:
            self.stream.write("\r\033[K" + line + elapsed)
        elif line != self._last_line:
            self.stream.write(line + elapsed + "\n")
        self._last_line = line
        self.stream.flush()
