"""Progress a person can follow: a tqdm bar on a terminal, plain periodic lines otherwise.

Both show step/total, elapsed, ETA, tokens/s, the train loss and the last test metric. Lines go to
stderr (stdout stays for results); a log file or CI gets one line per ``log_every`` steps instead of
a bar redrawn with carriage returns.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

SHORT = {"accuracy": "acc", "exact_match": "exact", "bits_per_token": "bits"}


def _test_metric(last_eval: dict[str, float], metric: str) -> str:
    if not last_eval or metric not in last_eval:
        return ""
    return f"test {SHORT.get(metric, metric)} {last_eval[metric]:.3f}"


class Progress:
    """``update(step, rec, last_eval)`` after each logged step; ``note(msg)`` for one-off lines."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, metric: str = "accuracy",
                 file: TextIO | None = None, elapsed: float = 0.0) -> None:
        self.file = file or sys.stderr
        self.enabled, self.metric, self.total = enabled, metric, total
        self.tty = enabled and bool(getattr(self.file, "isatty", lambda: False)())
        # tqdm's clock starts now; a resumed run's earlier time is added to what it shows
        self.bar = (tqdm(total=total, initial=initial, file=self.file, unit="step", dynamic_ncols=True,
                         smoothing=0.1, leave=True) if self.tty else None)
        if self.bar is not None and elapsed:
            self.bar.start_t -= elapsed
        self.step, self.initial, self.elapsed0 = initial, initial, elapsed

    def fields(self, rec: dict[str, Any], last_eval: dict[str, float]) -> str:
        parts = [f"loss {rec['loss']:.4f}"]
        if "tokens_per_s" in rec:
            parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
        if last_eval:
            parts.append(_test_metric(last_eval, self.metric))
        return "  ".join(parts)

    def update(self, step: int, rec: dict[str, Any], last_eval: dict[str, float]) -> None:
        """Show training progress at ``step`` (``rec['elapsed']``: seconds since the run began)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self.fields(rec, last_eval), refresh=False)
            self.bar.update(step - self.step)
        else:
            elapsed = rec["elapsed"]
            done = step - self.initial  # steps timed in this process (a resumed run's rate is its own)
            rate = done / max(elapsed - self.elapsed0, 1e-9)
            eta = (self.total - step) / rate if done else float("nan")
            print(f"step {step}/{self.total}  elapsed {tqdm.format_interval(elapsed)}  "
                  f"eta {tqdm.format_interval(eta) if eta == eta else '?'}  {self.fields(rec, last_eval)}",
                  file=self.file, flush=True)
        self.step = step

    def evaluated(self, step: int, last_eval: dict[str, float]) -> None:
        """One line per evaluation, kept above the bar (with progress on)."""
        if self.enabled:
            self.note(f"[test] step {step}/{self.total}  loss {last_eval['loss']:.4f}  "
                      f"{_test_metric(last_eval, self.metric)}")

    def note(self, msg: str) -> None:
        """A line of its own (run folder, resume point), above the bar on a terminal; shown even
        with progress off, since resuming a run needs its folder."""
        if self.bar is not None:
            self.bar.write(msg, file=self.file)
        else:
            print(msg, file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
