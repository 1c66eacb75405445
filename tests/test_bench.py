"""The benchmark command works: one tiny run (bench/run --quick); no timing is asserted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.stack import ROOT


def test_benchmark_command_runs_and_reports(tmp_path: Path):
    out = tmp_path / "results"
    command = [str(ROOT / "bench" / "run"), "--quick", "--servers", "blueprint,raw-asgi",
               "--workloads", "now,streams,fanout", "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "## (a) plain async view" in result.stdout

    data = json.loads((out / "results.json").read_text())
    rows = {row["server"]: row for row in data["summary"]["now"]}
    assert set(rows) == {"blueprint", "raw-asgi"}
    blueprint = rows["blueprint"]
    assert blueprint["requests_per_s"] > 0 and blueprint["ratio"] == 1.0
    assert blueprint["non_2xx"] == 0 and blueprint["socket_errors"] == 0
    assert blueprint["peak_rss_mb"] > 0 and blueprint["peak_threads"] > 0
    streams = {s["server"]: s for s in data["streams"]}
    assert streams["blueprint"]["max_streams_without_errors"] == 50
    # Fan-out (bench/fanout.py): 50 subscribers over two app replicas, every book to each once.
    fanout = data["fanout"]
    assert fanout["replicas"] == 2 and fanout["nginx_upstreams"] == 2
    (level,) = fanout["levels"]
    assert "error" not in level, level["error"]
    assert level["subscribers"] == level["connected"] == 50
    assert level["books"] > 0 and level["post_errors"] == []
    assert level["deliveries"] == 50 * level["books"]
    assert level["missed"] == 0 and level["duplicates"] == 0
    # A worker's hub listens once it has a subscriber: never more than one per worker.
    assert 1 <= level["listening_min"] <= level["listening_max"] <= level["workers"]
    assert level["peak_rss_mb"] > 0 and level["peak_threads"] > 0
    assert "## (e) fan-out" in result.stdout
    assert (out / "results.md").read_text().startswith("# Benchmark results")
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # It cleaned up after itself.
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=async-django-bench"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert left == ""
