"""Metrics from outside: summed over gunicorn's workers, never reachable through nginx."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

from harness.stack import Stack

# Runs inside an app container: 60 requests on fresh connections (so they spread
# over the workers), then several scrapes (answered by different workers).
PROBE = """
import glob, http.client, re
from concurrent.futures import ThreadPoolExecutor

def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", path, headers={"Host": "localhost"})
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, body

# 60 slow requests at once: the workers share them.
with ThreadPoolExecutor(30) as pool:
    assert all(s == 200 for s, _ in pool.map(lambda _: get(8000, "/async/?seconds=0.3"), range(60)))
files = glob.glob("/dev/shm/metrics/counter_*.db")  # gunicorn.conf.py's default
counts = set()
for _ in range(8):
    status, text = get(9100, "/metrics")
    m = re.search(r'app_requests_total[{]method="GET",route="async/",status="200"[}] (\\S+)', text)
    counts.add(float(m.group(1)))
print("WORKERS", len(files), "COUNTS", sorted(counts))
"""


def test_metrics_are_summed_over_workers(stack: Stack):
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    stack.compose("run", "--detach", "--no-deps", "--name", name, "-e", "GUNICORN_WORKERS=3", "app")
    try:
        for _ in range(60):
            health = subprocess.run(["docker", "exec", name, "python", "/srv/deploy/app/healthcheck.py"],
                                    capture_output=True)  # fmt: skip
            if health.returncode == 0:
                break
            subprocess.run(["sleep", "0.5"], check=True)
        processes = subprocess.run(["docker", "exec", name, "sh", "-c", "ls /proc | grep -c '^[0-9]'"],
                                   capture_output=True, text=True).stdout  # fmt: skip
        assert int(processes) >= 4, "a master and three workers"
        out = subprocess.run(["docker", "exec", name, "python", "-c", PROBE], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        # The requests were spread over several workers, and every scrape,
        # whichever worker answered it, reported the total: all 60.
        workers = int(re.search(r"WORKERS (\d+)", out.stdout).group(1))
        assert workers >= 2, out.stdout
        assert re.search(r"COUNTS \[60\.0\]", out.stdout), out.stdout
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_metrics_are_not_reachable_through_nginx(stack: Stack):
    assert stack.get("/metrics").status == 404
    published = stack.compose("port", "app", "9100", check=False)
    assert published.returncode != 0 or not published.stdout.strip()


def test_logs_are_json_lines_carrying_the_request_id(stack: Stack):
    seen = len(stack.logs("app"))
    response = stack.get("/async/?seconds=-1")  # a 400: Django logs a warning about it too
    assert response.status == 400
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
    lines = [line for line in stack.logs("app")[seen:].splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    mine = [e for e in entries if e.get("request_id") == request_id]
    loggers = {e["logger"] for e in mine}
    assert {"uvicorn.access", "django.request"} <= loggers, mine
    access = next(e for e in mine if e["logger"] == "uvicorn.access")
    assert access["status"] == 400 and access["path"] == "/async/?seconds=-1"
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)


def test_each_request_gets_its_own_id(stack: Stack):
    ids = {stack.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_nginx_counters_only_inside_the_compose_network(stack: Stack):
    code = "import urllib.request; print(urllib.request.urlopen('http://nginx:8081/nginx_status').read().decode())"
    out = stack.exec("app", "python", "-c", code).stdout
    assert "Active connections:" in out and "server accepts handled requests" in out
    published = stack.compose("port", "nginx", "8081", check=False)
    assert published.returncode != 0 or not published.stdout.strip()
    assert stack.get("/nginx_status").status == 404  # not on the public site either


def test_nginx_and_the_app_log_the_same_request_id(stack: Stack):
    response = stack.get("/now/", headers={"X-Request-ID": "forged-by-the-client-0000"})
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id  # nginx's own, not the client's
    deadline = 10
    while deadline and request_id not in stack.logs("nginx"):
        subprocess.run(["sleep", "1"], check=True)
        deadline -= 1
    nginx_line = next(json.loads(line) for line in stack.logs("nginx").splitlines() if request_id in line)
    assert nginx_line["logger"] == "nginx.access" and nginx_line["status"] == 200
    app_line = next(json.loads(line) for line in stack.logs("app").splitlines() if request_id in line)
    assert app_line["logger"] == "uvicorn.access" and app_line["path"] == "/now/"
