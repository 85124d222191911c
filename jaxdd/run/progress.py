"""Progress bars with an ETA for long work (tqdm, on stderr, so --json stdout stays clean).

Quiet mode: `--quiet` turns every bar off; without it a bar is drawn only when stderr is a
terminal (a log file or a CI job gets no carriage-return clutter). Event lines (`note`: a
skipped non-finite step, a periodic evaluation) are printed whenever progress is not quiet,
terminal or not.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Callable(done, total, extra=""): one tqdm bar named `what`, redrawn at most every
    `every` seconds, with elapsed time, rate and ETA. `enabled=False` (--quiet) draws
    nothing; a bar is only drawn on a terminal (see the module docstring)."""

    def __init__(self, what: str, every: float = 0.5, stream=None, enabled: bool = True):
        self.what, self.every, self.enabled = what, every, enabled
        self.stream = stream or sys.stderr
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        if not self.enabled or not _isatty(self.stream):
            return
        if self.bar is None or self.bar.total != total:
            self.close()
            self.bar = tqdm(total=total, initial=done, desc=self.what, file=self.stream,
                            mininterval=self.every, dynamic_ncols=True, leave=True)
        else:
            self.bar.update(done - self.bar.n)
        if extra:
            self.bar.set_postfix_str(extra, refresh=False)
        if done >= total:
            self.close()

    def note(self, text: str) -> None:
        """One line about an event, printed above the bar whenever progress is on."""
        if self.enabled:
            line = f"[{self.what}] {text}"
            if self.bar is not None:
                self.bar.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.refresh()
            self.bar.close()
            self.bar = None
