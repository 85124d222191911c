"""Progress lines with an ETA for long work (written to stderr, so --json stdout stays clean)."""

from __future__ import annotations

import sys
import time


def _fmt(sec: float) -> str:
    sec = int(max(sec, 0))
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m" if sec >= 3600 else f"{sec // 60}m{sec % 60:02d}s"


class Progress:
    """Callable(done, total): prints 'what done/total (p%) elapsed ETA' at most every
    `every` seconds (and always at the end)."""

    def __init__(self, what: str, every: float = 2.0, stream=None, enabled: bool = True):
        self.what, self.every, self.enabled = what, every, enabled
        self.stream = stream or sys.stderr
        self.t0 = time.time()
        self.last = 0.0

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        now = time.time()
        if not self.enabled or (now - self.last < self.every and done < total):
            return
        self.last = now
        el = now - self.t0
        eta = el / max(done, 1) * (total - done)
        print(f"[{self.what}] {done}/{total} ({100 * done / max(total, 1):.0f}%) "
              f"elapsed {_fmt(el)} ETA {_fmt(eta)} {extra}".rstrip(), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """One line about an event (a skipped step), printed whenever progress is on."""
        if self.enabled:
            print(f"[{self.what}] {text}", file=self.stream, flush=True)
