"""Memory and output helpers shared by the benchmark scripts (psutil; no Spark, no torch).

Peak resident memory of the processes a benchmark starts (the local Spark JVM, its
Python workers, a training child) in MB (2**20 bytes).
"""

from __future__ import annotations

import threading
import time

import psutil


def descendants_rss_mb(name: str | None = None) -> int:
    """Current RSS of this process's descendants together, MB; only those called ``name`` if given
    (``java``: the local Spark JVM). Forked Python workers share pages, so their sum overstates."""
    total = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if name is None or p.name() == name:
                total += p.memory_info().rss
        except psutil.Error:  # ended between the listing and the read
            pass
    return round(total / 2**20)


def descendant_peaks_mb() -> dict[str, int]:
    """Lifetime peak RSS (VmHWM) of each live descendant process, as ``{name_pid: MB}``."""
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            with open(f"/proc/{p.pid}/status") as f:
                status = f.read()
        except OSError:
            continue
        name = status.split("Name:", 1)[1].split()[0]
        hwm = [int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:")]
        if hwm:
            out[f"{name}_{p.pid}"] = round(hwm[0] / 1024)
    return out


class PeakRss:
    """Highest summed RSS of this process's descendants while the block runs (sampled every
    ``interval`` s; a JVM's VmHWM covers its whole life, so it cannot tell sizes apart).
    Re-entering the same object keeps the highest peak of all its blocks. ``name``: count only
    the descendants of that process name (``java``)."""

    def __init__(self, name: str | None = None, interval: float = 0.2):
        self.name, self.interval, self.peak_mb = name, interval, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, descendants_rss_mb(self.name))
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, descendants_rss_mb(self.name))


def write_json(path: str, body: dict) -> None:
    """``body`` as JSON at ``path``, written whole or not at all."""
    from esmm.util.files import atomic_write_json

    atomic_write_json(path, body, indent=1)
