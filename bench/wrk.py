"""wrk, the load generator: run it against 127.0.0.1 and read its report."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkResult:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    error_detail: str


def find_program(name: str, package: str) -> str:
    """The load generator's path, or a clear error naming the package to install."""
    path = shutil.which(name)
    if path is None:
        raise SystemExit(
            f"bench: {name} is not installed (Debian/Ubuntu: apt-get install {package}); bench/run installs it as root"
        )
    return path


def find_wrk() -> str:
    return find_program("wrk", "wrk")


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse(output: str) -> WrkResult:
    """Pull the numbers out of `wrk --latency` output."""
    requests = re.search(r"(\d+) requests in", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not requests or not rate:
        raise ValueError(f"wrk printed no summary:\n{output}")
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    error_counts = [int(n) for n in errors.groups()] if errors else [0, 0, 0, 0]
    return WrkResult(
        requests=int(requests.group(1)),
        requests_per_s=float(rate.group(1)),
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(error_counts),
        error_detail="connect {}, read {}, write {}, timeout {}".format(*error_counts) if errors else "",
    )


def run(url: str, connections: int, seconds: float, timeout_s: float) -> WrkResult:
    """One wrk run: two threads, `connections` open at once, for `seconds`; aimed at 127.0.0.1 only."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"bench: load goes to 127.0.0.1 only, not {url}")
    command = [find_wrk(), "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={round(timeout_s)}s",
               "--latency", url]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout_s + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    return parse(result.stdout)
