"""Sampling an app container while load runs: peak resident memory and OS threads."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

from harness.stack import docker

SCRIPT = "for f in /proc/[0-9]*/status; do cat $f 2>/dev/null; done"
# The processes of the sampling command itself are not the app's.
SAMPLER_NAMES = {"sh", "cat"}


@dataclass
class Usage:
    rss_mb: float
    threads: int


def usage(container: str) -> Usage:
    """Sum of VmRSS and Threads over the container's processes, right now."""
    out = docker("exec", container, "sh", "-c", SCRIPT, check=False, timeout=30).stdout
    rss_kb = threads = 0
    for block in out.split("Name:")[1:]:
        name = block.split(None, 1)[0]
        if name in SAMPLER_NAMES:
            continue
        rss = re.search(r"^VmRSS:\s+(\d+) kB", block, re.M)
        count = re.search(r"^Threads:\s+(\d+)", block, re.M)
        rss_kb += int(rss.group(1)) if rss else 0
        threads += int(count.group(1)) if count else 0
    return Usage(rss_mb=rss_kb / 1024, threads=threads)


def settled_usage(container: str, timeout_s: float = 30.0) -> Usage:
    """usage() once the thread count stops falling: requests of the workload before still finishing are not idle."""
    last = usage(container)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = usage(container)
        if now.threads >= last.threads:
            return now
        last = now
    return last


class PeakSampler:
    """Samples usage() about once a second in the background; keeps the peak."""

    def __init__(self, container: str) -> None:
        self.container = container
        self.peak = Usage(0.0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            now = usage(self.container)
            self.peak = Usage(max(self.peak.rss_mb, now.rss_mb), max(self.peak.threads, now.threads))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=35)
