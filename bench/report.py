"""The benchmark's report: Markdown tables, the raw numbers as JSON, and a chart."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def spread(values: list[float]) -> float:
    """Run-to-run noise of one server on one workload: (max - min) / mean."""
    if len(values) < 2 or not mean(values):
        return 0.0
    return (max(values) - min(values)) / mean(values)


def workload_noise(rows: list[dict]) -> float:
    """The largest spread between repeats among servers that served the workload.

    A server that answered with errors, or at under a tenth of the best rate,
    has a spread that says nothing about the machine's noise.
    """
    best = max((r["requests_per_s"] for r in rows), default=0.0)
    served = [r for r in rows if not r["non_2xx"] and not r["socket_errors"] and r["requests_per_s"] >= best / 10]
    return max((r["noise"] for r in served), default=0.0)


def summarise(results: dict) -> dict[str, list[dict]]:
    """Per workload, one row per server with means over the repeats and the ratio to the blueprint."""
    tables: dict[str, list[dict]] = {}
    for m in results["throughput"]:
        runs = m["runs"]
        rates = [r["requests_per_s"] for r in runs]
        tables.setdefault(m["workload"], []).append({
            "server": m["server"],
            "seconds": m.get("seconds") or results["duration_s"],
            "requests_per_s": mean(rates),
            "noise": spread(rates),
            "p50_ms": mean([r["p50_ms"] for r in runs]),
            "p99_ms": mean([r["p99_ms"] for r in runs]),
            "non_2xx": sum(r["non_2xx"] for r in runs),
            "socket_errors": sum(r["socket_errors"] for r in runs),
            "peak_rss_mb": m["peak_rss_mb"],
            "peak_threads": m["peak_threads"],
        })  # fmt: skip
    for rows in tables.values():
        base = next((r["requests_per_s"] for r in rows if r["server"] == "blueprint"), None)
        for row in rows:
            row["ratio"] = row["requests_per_s"] / base if base else float("nan")
    return tables


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"{m['date']}: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, kernel {m['kernel']}, "
        f"Docker {m['docker']}. {results['workers']} workers per server, "
        f"{results['repeat']} run(s) each; wrk (and h2load for streams) on the same machine, through nginx.",
        "",
    ]
    tables = summarise(results)
    for name, rows in tables.items():
        lines += [f"## {results['workloads'].get(name, name)}", ""]
        lines += ["| server | req/s | ratio to blueprint | run-to-run spread | p50 ms | p99 ms | non-2xx | "
                  "socket errors | peak RSS MB | threads |", "|" + " --- |" * 10]  # fmt: skip
        for r in sorted(rows, key=lambda r: -r["requests_per_s"]):
            lines.append(
                f"| {r['server']} | {r['requests_per_s']:.0f} | {r['ratio']:.2f} | {r['noise']:.1%} | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['non_2xx']} | {r['socket_errors']} | "
                f"{r['peak_rss_mb']:.0f} | {r['peak_threads']} |"
            )
        lines += ["", f"Runs of {rows[0]['seconds']:g} s. Run-to-run noise: {workload_noise(rows):.1%} (the largest "
                  "spread between repeats of a server that served this workload without errors).", ""]  # fmt: skip
    if results["streams"]:
        ref = results["streams"][0]["reference_streams"]
        lines += ["## (d) held Server-Sent Events streams (GET /events/?count=6, N open at once, HTTP/2 to nginx)", ""]
        lines += [f"| server | most streams held with zero errors | RSS MB at {ref} | threads at {ref} | "
                  "idle threads | threads per stream |", "|" + " --- |" * 6]  # fmt: skip
        for s in results["streams"]:
            lines.append(
                f"| {s['server']} | {s['max_streams_without_errors']} | {s['rss_mb_at_reference']:.0f} | "
                f"{s['threads_at_reference']} | {s['idle_threads']} | {s['threads_per_stream']:.3f} |"
            )
        lines.append("")
    lines += fanout_markdown(results)
    lines += tasks_markdown(results)
    for failure in results.get("failed", []):
        lines += [f"{failure['server']} did not start: see results.json for its log.", ""]
    lines += ["Servers:", ""] + [f"- {name}: {text}" for name, text in results["servers"].items()]
    return "\n".join(lines) + "\n"


def fanout_markdown(results: dict) -> list[str]:
    """The fan-out table (bench/fanout.py): one row per number of subscribers."""
    fan = results.get("fanout")
    if not fan:
        return []
    lines = [f"## {results['workloads'].get('fanout', 'fan-out')}", ""]
    lines += ["| subscribers | books | p50 ms | p99 ms | max ms | a book's first → last subscriber, p50 ms | "
              "missed | duplicates | reconnects | RSS MB idle → peak | KB per subscriber | threads idle → peak | "
              "threads per subscriber | listening connections / workers | DB connections at most (active) | "
              "CPU µs per event: app, nginx, db | client CPU |", "|" + " --- |" * 17]  # fmt: skip
    errors = []
    for f in fan["levels"]:
        if "error" in f:
            errors.append(f"{f['subscribers']} subscribers: {f['error']}")
            continue
        cpu = ", ".join(f"{f['cpu_us_per_event'].get(k, 0):.0f}" for k in ("app", "nginx", "db"))
        listening = f"{f['listening_min']}" if f["listening_min"] == f["listening_max"] else (
            f"{f['listening_min']}-{f['listening_max']}")  # fmt: skip
        lines.append(
            f"| {f['subscribers']} | {f['books']} | {f['p50_ms']:.0f} | {f['p99_ms']:.0f} | {f['max_ms']:.0f} | "
            f"{f['first_p50_ms']:.0f} → {f['last_p50_ms']:.0f} | "
            f"{f['missed']} | {f['duplicates']} | {f['reconnects']} | "
            f"{f['idle_rss_mb']:.0f} → {f['peak_rss_mb']:.0f} | "
            f"{f['rss_kb_per_subscriber']:.1f} | {f['idle_threads']} → {f['peak_threads']} | "
            f"{f['threads_per_subscriber']:.3f} | {listening} / {f['workers']} | "
            f"{f['db_connections_max']} ({f['db_active_max']}) | {cpu} | {f['client_cpu']:.0%} |"
        )
    transport = {"http1": "a connection per subscriber (HTTP/1.1)", "h2c": "HTTP/2 to nginx, 100 streams a connection"}
    lines += ["", f"{fan['replicas']} app replicas behind one nginx, {fan['seconds']:g} s of books per level, "
              f"{transport.get(fan.get('transport', 'http1'))}. "
              "Latency: from each book's created_at (the server's clock, just before its INSERT commits) to "
              "its event's arrival at the client; missed and duplicates are counted per subscriber and book. "
              "Listening connections: Postgres backends running the hub's statements (app/books/live.py), "
              "one per worker expected. Client CPU near 100 %: the load generator itself is late.", ""]  # fmt: skip
    notes = [f"{f['subscribers']} subscribers: {problem}." for f in fan["levels"] for problem in f.get("problems", [])]
    notes += [f"Not measured: {error}" for error in errors]
    return [*lines, *[f"- {note}" for note in notes], ""] if notes else lines


def tasks_markdown(results: dict) -> list[str]:
    """The tasks tables (bench/tasks.py): enqueueing, then one row per batch and number of workers."""
    t = results.get("tasks")
    if not t:
        return []
    lines = [f"## {results['workloads'].get('tasks', 'tasks')}", ""]
    lines += ["| measure | calls | per s | p50 ms | p99 ms | max ms | errors | tasks finished / enqueued (failed) | "
              "last task finished, s after the calls |", "|" + " --- |" * 9]  # fmt: skip
    for e in t["enqueue"]:
        per_s = "n/a" if math.isnan(e["per_s"]) else f"{e['per_s']:.0f}"
        drain = "n/a" if math.isnan(e["drain_s"]) else f"{e['drain_s']:.1f}"
        lines.append(
            f"| {e['what']} | {e['calls']} | {per_s} | {e['p50_ms']:.1f} | {e['p99_ms']:.1f} | "
            f"{e['max_ms']:.1f} | {len(e['errors'])} | {e['finished']} / {e['tasks']} ({e['failed']}) | {drain} |"
        )
    lines += ["", "| task | workers | tasks | finished (failed) | first start → last finish, s | tasks/s | "
              "each worker's tasks/s | a task, start → finish, p50 ms | first start after the commit, ms |",
              "|" + " --- |" * 9]  # fmt: skip
    for b in t["batches"]:
        each = ", ".join(f"{rate:.0f}" for rate in b["per_worker_per_s"])
        lines.append(
            f"| {b['task']} | {b['workers']} | {b['tasks']} | {b['finished']} ({b['failed']}) | {b['span_s']:.2f} | "
            f"{b['tasks_per_s']:.1f} | {each} | {b['in_task_p50_ms']:.1f} | {b['first_pickup_ms']:.0f} |"
        )
    lines += ["", "The demo's task (books.tasks.summarize_book), BOOK_SUMMARY_DELAY 0 (no-op: one SELECT, one "
              f"UPDATE) or 0.1 s; workers poll every {t['interval_s']:g} s while the queue is empty. Enqueue: "
              f"POSTs from {t['clients']} kept-open connections for {t['post_seconds']:g} s with one worker "
              "running; aenqueue() timed in the app container by as many callers, at most one app worker's pool "
              "of connections; pickup: one task at a time into an idle worker's queue. Batches: committed in one "
              "transaction while the workers wait; each worker's rate is its tasks over its own first start → "
              "last finish.", ""]  # fmt: skip
    notes = [f"{problem}." for problem in t.get("problems", [])]
    return [*lines, *[f"- {note}" for note in notes], ""] if notes else lines


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = summarise(results)
    fan = [f for f in (results.get("fanout") or {}).get("levels", []) if "error" not in f]
    batches = (results.get("tasks") or {}).get("batches", [])
    panels = len(tables) + (1 if results["streams"] else 0) + (1 if fan else 0) + (1 if batches else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5 * max(panels, 1), 4.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], tables.items(), strict=False):
        rows = sorted(rows, key=lambda r: -r["requests_per_s"])
        colors = ["tab:green" if r["server"] == "blueprint" else "tab:gray" for r in rows]
        ax.bar([r["server"] for r in rows], [r["requests_per_s"] for r in rows], color=colors)
        ax.set_title(results["workloads"].get(name, name), fontsize=9)
        ax.set_ylabel("requests/s")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    if results["streams"]:
        ax = axes[0][len(tables)]
        rows = sorted(results["streams"], key=lambda s: -s["max_streams_without_errors"])
        colors = ["tab:green" if s["server"] == "blueprint" else "tab:gray" for s in rows]
        ax.bar([s["server"] for s in rows], [s["max_streams_without_errors"] for s in rows], color=colors)
        ax.set_title("(d) streams held with zero errors", fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    if fan:
        ax = axes[0][panels - 1 - (1 if batches else 0)]
        labels = [str(f["subscribers"]) for f in fan]
        ax.plot(labels, [f["p50_ms"] for f in fan], marker="o", color="tab:green", label="p50")
        ax.plot(labels, [f["p99_ms"] for f in fan], marker="o", color="tab:red", label="p99")
        ax.set_title("(e) fan-out: commit to delivery", fontsize=9)
        ax.set_xlabel("subscribers")
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
    if batches:
        ax = axes[0][panels - 1]
        runs: dict[tuple[str, int], list[float]] = {}
        for b in batches:
            runs.setdefault((b["task"], b["workers"]), []).append(b["tasks_per_s"])
        ax.bar([f"{task}, {workers}w" for task, workers in runs], [mean(rates) for rates in runs.values()],
               color=["tab:green" if workers == 1 else "tab:olive" for _, workers in runs])  # fmt: skip
        ax.set_title("(f) tasks finished per second (mean of runs)", fontsize=9)
        ax.set_ylabel("tasks/s")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "results.md", out / "results.json", out / "chart.png"
    md.write_text(markdown(results))
    js.write_text(json.dumps({**results, "summary": summarise(results)}, indent=2, default=str))
    chart(results, png)
    return [md, js, png]
