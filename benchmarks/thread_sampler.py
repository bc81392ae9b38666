"""Where a process's Python threads are, sampled: which line each thread is on, how often.

A host-side profile for the input pipeline (`input_pipeline --feed ... --sample-threads`): while
a model trains on the pipeline's batches, is the training loop waiting for a batch, are the
decoding threads in nvJPEG, launching kernels, or waiting for the GPU? A daemon thread reads
`sys._current_frames()` every `interval` seconds; a thread blocked in C code shows the Python
line that called it. The sampler needs the interpreter lock to take a sample, so a thread that
holds it for long is sampled late: the shares are of samples, not exactly of time.
"""

from __future__ import annotations

import collections
import re
import sys
import threading
from pathlib import Path


def _where(frame, ours) -> str:
    """The innermost line, and the innermost line in a folder named in `ours` if that is another."""
    inner = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}"
    f = frame
    while f is not None and Path(f.f_code.co_filename).parent.name not in ours:
        f = f.f_back
    if f is None or f is frame:
        return inner
    return f"{inner} < {Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}"


def _group(name: str) -> str:
    """Threads of one pool under one name: "decode_3" -> "decode"."""
    return re.sub(r"[_-]\d+$", "", name)


class ThreadSampler:
    """Samples every thread's current line while in use (`with ThreadSampler() as s:`); then
    `s.summary()`.

    Args:
      interval: seconds between samples.
      ours: folders of our own code: a sample names the innermost line there too.
    """

    def __init__(self, interval: float = 0.005, ours: tuple[str, ...] = ("qresnet", "benchmarks")):
        self.interval, self.ours = interval, ours
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    self.counts[_group(names.get(ident, str(ident)))][_where(frame, self.ours)] += 1

    def summary(self, top: int = 8) -> dict[str, dict]:
        """Per thread group: samples taken (summed over its threads) and the `top` lines with their
        share of those samples.

        Returns:
          {group: {"samples": n, "top": [[line, share], ...]}}.
        """
        out = {}
        for group, counts in sorted(self.counts.items()):
            n = sum(counts.values())
            out[group] = {"samples": n, "top": [[w, round(c / n, 4)] for w, c in counts.most_common(top)]}
        return out
