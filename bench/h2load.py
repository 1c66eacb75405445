"""h2load, the load generator for held streams: many HTTP/2 streams over a few connections.

Thousands of Server-Sent Events streams are thousands of connections from nginx
to the app, whatever the client side looks like. On the client side, a TLS
proxy or CDN in front multiplexes browsers' streams over HTTP/2; h2load does
the same to nginx (HTTP/2 over cleartext, `http2 on` in the nginx template),
so the streams are held by the app rather than by the client machine's
sockets. Aimed at 127.0.0.1 only.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from bench.wrk import find_program

# Streams per connection: under nginx's http2_max_concurrent_streams (128).
STREAMS_PER_CONNECTION = 100


@dataclass
class H2Result:
    requests: int  # completed streams
    requests_per_s: float
    non_2xx: int
    socket_errors: int  # failed, errored or timed-out streams
    error_detail: str


def find_h2load() -> str:
    return find_program("h2load", "nghttp2-client")


def parse(output: str) -> H2Result:
    """Pull the numbers out of h2load's summary."""
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        output,
    )
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    if not counts or not statuses or not rate:
        raise ValueError(f"h2load printed no summary:\n{output[-2000:]}")
    done, failed, errored, timeout = (int(counts.group(i)) for i in (3, 5, 6, 7))
    return H2Result(
        requests=done,
        requests_per_s=float(rate.group(1)),
        non_2xx=sum(int(statuses.group(i)) for i in (2, 3, 4)),
        socket_errors=failed + errored + timeout,
        error_detail=f"failed {failed}, errored {errored}, timeout {timeout}",
    )


def run(url: str, streams: int, seconds: float) -> H2Result:
    """Hold about `streams` streams open for `seconds`, each connection starting a new one as one ends."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"bench: load goes to 127.0.0.1 only, not {url}")
    per_connection = min(streams, STREAMS_PER_CONNECTION)
    connections = -(-streams // per_connection)
    command = [find_h2load(), f"--clients={connections}", f"--max-concurrent-streams={per_connection}",
               f"--duration={max(1, round(seconds))}", f"--threads={min(2, connections)}", url]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise RuntimeError(f"h2load failed ({result.returncode}): {result.stderr or result.stdout}")
    return parse(result.stdout)
