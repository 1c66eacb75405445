"""The benchmark command works: one tiny run (bench/run --quick); no speed is asserted, only what settings imply."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from harness.stack import ROOT, docker


def test_benchmark_command_runs_and_reports(tmp_path: Path):
    out = tmp_path / "results"
    command = [str(ROOT / "bench" / "run"), "--quick", "--servers", "blueprint,raw-asgi",
               "--workloads", "now,streams,fanout,tasks", "--out", str(out)]  # fmt: skip
    # Its own compose project, beside this run's stacks (STACK_PROJECT), never one of them.
    env = {**os.environ, "BENCH_PROJECT": f"{os.environ.get('STACK_PROJECT', 'async-django-test')}-bench"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
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
    # Tasks (bench/tasks.py): every task enqueued, by the view, by aenqueue() or in a batch, ran and succeeded.
    tasks = data["tasks"]
    assert tasks is not None, data["failed"]
    assert tasks["problems"] == []
    assert [e["what"].split(" ")[0] for e in tasks["enqueue"]] == ["POST", "aenqueue()", "pickup"]
    for measure in tasks["enqueue"]:
        assert measure["calls"] > 0 and measure["errors"] == []
        assert measure["tasks"] >= measure["calls"] and measure["finished"] == measure["tasks"]
        assert measure["failed"] == 0 and 0 < measure["p50_ms"] <= measure["p99_ms"] <= measure["max_ms"]
    pickup = tasks["enqueue"][2]
    assert pickup["max_ms"] < 1000 * tasks["interval_s"] + 5000  # idle workers look every interval_s
    batches = {(b["task"], b["workers"]): b for b in tasks["batches"]}
    assert set(batches) == {("no-op", 1), ("no-op", 2), ("100 ms", 1), ("100 ms", 2)}
    for batch in batches.values():
        assert batch["finished"] == batch["tasks"] > 0 and batch["failed"] == 0
        assert batch["tasks_per_s"] > 0 and 1 <= len(batch["per_worker_per_s"]) <= batch["workers"]
    # A 100 ms task takes at least its 100 ms: the workers ran them with the delay they were given.
    assert batches["100 ms", 1]["in_task_p50_ms"] >= 100 > batches["no-op", 1]["in_task_p50_ms"]
    assert "## (f) tasks" in result.stdout
    assert (out / "results.md").read_text().startswith("# Benchmark results")
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # It cleaned up after itself.
    project = env["BENCH_PROJECT"]
    left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").stdout.strip()
    assert left == ""
