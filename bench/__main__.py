"""The benchmark: the same app image under each server, behind the same nginx, against the same Postgres.

Starts a copy of the stack of its own, drives each server through nginx with wrk and h2load, and
removes it all at the end. Servers, workloads and how to read the results: docs/performance.md.
Results: printed, and written to results.md, results.json and chart.png in --out (bench/results).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench import fanout, h2load, report, tasks, wrk
from bench.sample import PeakSampler, settled_usage
from bench.servers import BY_NAME, SERVERS, Server
from harness.stack import ROOT, Stack


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    path: str
    connections: int
    # wrk counts the responses that arrive within its run, so each connection's
    # request still in flight at the end is lost: for one-second requests that
    # is up to a second of every connection's count, a tenth of a 10 s run. A
    # longer run keeps that cut-off small beside what the server does.
    min_seconds: float = 0.0

    def run_seconds(self, duration: float, quick: bool) -> float:
        return duration if quick else max(duration, self.min_seconds)


WORKLOADS = {
    "now": Workload("now", "(a) plain async view: GET /now/, 50 connections", "/now/", 50),
    "books": Workload("books", "(b) async ORM read: GET /books/ over 20 rows, 50 connections", "/books/", 50),
    "sleep": Workload(
        "sleep",
        "(c) GET /async/?seconds=1, 1,000 connections (limit 1,000 req/s)",
        "/async/?seconds=1",
        1000,
        min_seconds=30.0,
    ),
}
# A stream lasts five seconds; h2load keeps N open at once for STREAM_SECONDS,
# starting a new one as each ends (bench/h2load.py: why HTTP/2 to nginx).
STREAM_PATH = "/events/?count=6"
STREAM_SECONDS = 16
# Live updates (bench/fanout.py): N subscribers of /books/stream/ over this many
# app replicas, behind the one nginx; a book every FANOUT_INTERVAL seconds.
FANOUT_REPLICAS = 2
FANOUT_INTERVAL = 0.1
FANOUT_TITLE = (
    f"(e) fan-out: a book every {FANOUT_INTERVAL * 1000:.0f} ms to N subscribers of GET /books/stream/, "
    f"{FANOUT_REPLICAS} app replicas"
)
TASKS_TITLE = "(f) tasks: enqueueing from the async view, and tasks finished per second by 1 and 2 workers"
OTHER_WORKLOADS = ("streams", "fanout", "tasks")
# Workloads that run against the blueprint alone, after the servers'.
BLUEPRINT_ONLY = {"fanout", "tasks"}


@dataclass
class Measurement:
    server: str
    workload: str
    seconds: float = 0.0  # per run
    runs: list[dict] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    peak_threads: int = 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--servers", default=",".join(s.name for s in SERVERS), help="comma-separated, of: %(default)s (default: all)"
    )
    parser.add_argument(
        "--workloads", default="now,books,sleep,streams,fanout,tasks", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per server and workload (default 2)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers per server (default: cores)")
    parser.add_argument(
        "--stream-levels", default="1000,2000,3000,4000,5000", help="held streams (default %(default)s)"
    )
    parser.add_argument("--fanout-subscribers", default="1000,5000", help="fan-out levels (default 1000,5000)")
    parser.add_argument("--fanout-seconds", type=float, default=30.0, help="of commits per fan-out level (default 30)")
    parser.add_argument(
        "--fanout-transport",
        choices=sorted(fanout.TRANSPORTS),
        default="http1",
        help="http1: a connection per subscriber (default); h2c: HTTP/2 to nginx, 100 streams a connection "
        "(Docker's userland proxy stops a few thousand connections short: docs/performance.md)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="results directory (default bench/results)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny load, to check that the command works")
    args = parser.parse_args(argv)
    unknown = set(args.servers.split(",")) - set(BY_NAME)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(BY_NAME)}")
    unknown = set(args.workloads.split(",")) - {*WORKLOADS, *OTHER_WORKLOADS}
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join([*WORKLOADS, *OTHER_WORKLOADS])}")
    if args.duration <= 0 or args.repeat < 1 or args.workers < 1 or args.fanout_seconds <= 0:
        parser.error("--duration, --repeat, --workers and --fanout-seconds must be positive")
    try:
        args.levels = [int(n) for n in args.stream_levels.split(",")]
        args.fanout_levels = [int(n) for n in args.fanout_subscribers.split(",")]
    except ValueError:
        parser.error("--stream-levels and --fanout-subscribers take whole numbers separated by commas, e.g. 1000,2000")
    return args


def raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, needed))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed:
        print(f"bench: open-files limit {wanted} < {needed}: the largest stream levels may fail on the client side")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))  # fmt: skip
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "docker": docker.stdout.strip(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # BENCH_PROJECT and BENCH_EDGE_SUBNET: two runs side by side on one Docker engine.
        self.stack = Stack(
            project=os.environ.get("BENCH_PROJECT", "async-django-bench"),
            edge_subnet=os.environ.get("BENCH_EDGE_SUBNET", "10.130.89.0/24"),
            extra_files=[ROOT / "bench" / "compose.bench.yml"],
        )
        self.url = f"http://127.0.0.1:{self.stack.port}"

    def env(self, server: Server) -> dict[str, str]:
        return {
            "GUNICORN_WORKERS": str(self.args.workers),
            # The whole machine for the app container (docker-compose.yml's default is one CPU).
            "APP_CPUS": str(os.cpu_count() or 1),
            "BENCH_APP_COMMAND": server.app_command(self.args.workers),
            "EDGE_SUBNET": self.stack.edge_subnet,
            # The image's default (off), which the test stack turns on.
            "GUNICORN_ACCESS_LOG": "",
            **dict(server.env),
        }

    def start(self, server: Server, extra: dict[str, str] | None = None) -> None:
        self.stack.write_env({**self.env(server), **(extra or {})})
        self.stack.compose("up", "--detach", "--wait", "--wait-timeout", "120", "--force-recreate", "--no-deps", "app")
        self.stack.compose("up", "--detach", "--wait", "--wait-timeout", "60", "--force-recreate", "--no-deps", "nginx")

    def seed_books(self) -> None:
        code = (
            "from books.models import Book\n"
            "missing = 20 - Book.objects.count()\n"
            "Book.objects.bulk_create([Book(title=f'Book {n:02}') for n in range(max(0, missing))])\n"
        )
        self.stack.exec("app", "python", "manage.py", "shell", "-c", code)

    def load(self, path: str, connections: int, seconds: float) -> tuple[wrk.WrkResult, PeakSampler]:
        with PeakSampler(self.stack.container_id("app")) as sampler:
            result = wrk.run(self.url + path, connections, seconds, timeout_s=30)
        return result, sampler

    def hold_streams(self, streams: int, seconds: float) -> tuple[h2load.H2Result, PeakSampler]:
        with PeakSampler(self.stack.container_id("app")) as sampler:
            result = h2load.run(self.url + STREAM_PATH, streams, seconds)
        return result, sampler

    def throughput(self, server: Server, workload: Workload) -> Measurement:
        seconds = workload.run_seconds(self.args.duration, self.args.quick)
        measurement = Measurement(server.name, workload.name, seconds)
        connections = min(workload.connections, 50) if self.args.quick else workload.connections
        wrk.run(self.url + workload.path, min(connections, 50), 1, timeout_s=30)  # warm-up
        for _ in range(self.args.repeat):
            result, sampler = self.load(workload.path, connections, seconds)
            measurement.runs.append(asdict(result))
            measurement.peak_rss_mb = max(measurement.peak_rss_mb, sampler.peak.rss_mb)
            measurement.peak_threads = max(measurement.peak_threads, sampler.peak.threads)
        return measurement

    def streams(self, server: Server) -> dict:
        idle = settled_usage(self.stack.container_id("app"))
        levels, held = [], 0
        for level in self.args.levels:
            result, sampler = self.hold_streams(level, 7 if self.args.quick else STREAM_SECONDS)
            ok = result.non_2xx == 0 and result.socket_errors == 0 and result.requests >= level
            levels.append({"streams": level, "ok": ok, **asdict(result), "peak_rss_mb": sampler.peak.rss_mb,
                           "peak_threads": sampler.peak.threads})  # fmt: skip
            if not ok:
                break
            held = level
            time.sleep(2)  # let the last streams close before the next level
        at_first = levels[0]
        return {
            "server": server.name,
            "max_streams_without_errors": held,
            "levels": levels,
            "idle_threads": idle.threads,
            "idle_rss_mb": idle.rss_mb,
            "reference_streams": at_first["streams"],
            "rss_mb_at_reference": at_first["peak_rss_mb"],
            "threads_at_reference": at_first["peak_threads"],
            "threads_per_stream": (at_first["peak_threads"] - idle.threads) / at_first["streams"],
        }

    def nginx_upstreams(self) -> int:
        """The app servers nginx sends requests to now (nginx/upstream/app-upstream writes them)."""
        conf = self.stack.exec("nginx", "cat", "/etc/nginx/conf.d/01-app-upstream.conf", check=False).stdout
        return sum(1 for line in conf.splitlines() if line.strip().startswith("server ") and " down;" not in line)

    def fanout(self) -> dict:
        """bench/fanout.py at each level, against the blueprint with FANOUT_REPLICAS app containers."""
        args, server = self.args, BY_NAME["blueprint"]
        self.start(server, {"APP_REPLICAS": str(FANOUT_REPLICAS)})
        deadline = time.monotonic() + 60
        while self.nginx_upstreams() < FANOUT_REPLICAS and time.monotonic() < deadline:
            time.sleep(1)
        apps = self.stack.container_id("app").split()
        db, nginx = self.stack.container_id("db"), self.stack.container_id("nginx")
        outcome: dict = {"server": server.name, "replicas": len(apps), "nginx_upstreams": self.nginx_upstreams(),
                         "interval_s": FANOUT_INTERVAL, "seconds": args.fanout_seconds,
                         "transport": args.fanout_transport, "levels": []}  # fmt: skip
        for level in args.fanout_levels:
            config = fanout.Config(port=self.stack.port, token=self.stack.api_token, subscribers=level,
                                   seconds=args.fanout_seconds, interval=FANOUT_INTERVAL,
                                   transport=args.fanout_transport)  # fmt: skip
            for app in apps:  # the last level's streams closed
                settled_usage(app)
            try:
                result = fanout.run(config, fanout.Probe(apps, db, nginx))
            except fanout.FanoutError as error:
                outcome["levels"].append({"subscribers": level, "error": str(error)})
                print(f"  fanout {level}: {error}", flush=True)
                break
            problems = fanout.verdict(result)
            outcome["levels"].append({**asdict(result), "problems": problems})
            print(f"  fanout: {fanout.line(result)}", flush=True)
            for problem in problems:
                print(f"  fanout {level}: {problem}", flush=True)
            time.sleep(2)
        return outcome

    def tasks(self) -> dict:
        """bench/tasks.py against the blueprint, one app container, its task workers recreated per step."""
        server = BY_NAME["blueprint"]
        self.start(server)
        config = tasks.Config.quick() if self.args.quick else tasks.Config(repeat=self.args.repeat)
        outcome = tasks.Tasks(self.stack, lambda extra: self.stack.write_env({**self.env(server), **extra}), config)
        return {"server": server.name, **outcome.run()}

    def run(self) -> dict:
        args = self.args
        servers = [BY_NAME[name] for name in args.servers.split(",")]
        workloads = args.workloads.split(",")
        raise_open_files_limit(max(*args.levels, *args.fanout_levels) + 2000)
        results: dict = {"machine": machine(), "workers": args.workers, "duration_s": args.duration,
                         "repeat": args.repeat, "throughput": [], "streams": [], "fanout": None,
                         "tasks": None, "failed": []}  # fmt: skip
        print(f"bench: building images and starting the stack on {self.url} ...", flush=True)
        self.stack.compose("down", "--volumes", "--remove-orphans", check=False)
        try:
            self.stack.compose("build", "--quiet", timeout=1800)
            self.stack.write_env(self.env(servers[0]))
            self.stack.up()
            self.seed_books()
            # Fan-out and tasks alone need none of the servers: only their own blueprint runs below.
            for server in servers if set(workloads) - BLUEPRINT_ONLY else []:
                print(f"bench: {server.name}: {server.description}", flush=True)
                try:
                    self.start(server)
                except AssertionError as exc:
                    # One server that does not come up must not lose the others' numbers.
                    logs = self.stack.compose("logs", "--no-color", "--tail", "20", "app", check=False).stdout
                    results["failed"].append({"server": server.name, "error": str(exc)[-2000:], "logs": logs[-4000:]})
                    print(f"  did not start; last log lines:\n{logs[-2000:]}", flush=True)
                    continue
                for name in workloads:
                    if name in server.skips or name in BLUEPRINT_ONLY:
                        continue
                    if name == "streams":
                        outcome = self.streams(server)
                        results["streams"].append(outcome)
                        print(f"  streams: {outcome['max_streams_without_errors']} held without errors, "
                              f"{outcome['threads_per_stream']:.3f} threads per stream", flush=True)  # fmt: skip
                    else:
                        measurement = self.throughput(server, WORKLOADS[name])
                        results["throughput"].append(asdict(measurement))
                        rates = ", ".join(f"{r['requests_per_s']:.0f}" for r in measurement.runs)
                        print(f"  {name}: {rates} req/s", flush=True)
            if "fanout" in workloads:
                print(f"bench: fan-out: the blueprint with {FANOUT_REPLICAS} app replicas", flush=True)
                try:
                    results["fanout"] = self.fanout()
                except AssertionError as exc:
                    logs = self.stack.compose("logs", "--no-color", "--tail", "20", "app", check=False).stdout
                    results["failed"].append({"server": "blueprint (fan-out)", "error": str(exc)[-2000:],
                                              "logs": logs[-4000:]})  # fmt: skip
                    print(f"  did not start; last log lines:\n{logs[-2000:]}", flush=True)
            if "tasks" in workloads:
                print("bench: tasks: the blueprint and its task workers", flush=True)
                try:
                    results["tasks"] = self.tasks()
                except (AssertionError, subprocess.TimeoutExpired, StopIteration, ValueError) as exc:
                    logs = self.stack.compose("logs", "--no-color", "--tail", "20", "app", "worker", check=False).stdout
                    results["failed"].append({"server": "blueprint (tasks)", "error": str(exc)[-2000:],
                                              "logs": logs[-4000:]})  # fmt: skip
                    print(f"  failed; last log lines:\n{logs[-2000:]}", flush=True)
        finally:
            self.stack.down()
        return results


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.quick:
        args.duration, args.repeat, args.levels = 2.0, 1, [50]
        args.fanout_levels, args.fanout_seconds = [50], 3.0
    wrk.find_wrk()
    if "streams" in args.workloads.split(","):
        h2load.find_h2load()
    results = Bench(args).run()
    results["workloads"] = {**{name: w.title for name, w in WORKLOADS.items()}, "fanout": FANOUT_TITLE,
                            "tasks": TASKS_TITLE}  # fmt: skip
    results["servers"] = {s.name: s.description for s in SERVERS}
    paths = report.write(results, args.out)
    print(report.markdown(results))
    print("bench: wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
