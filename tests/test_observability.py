"""Metrics from outside: summed over gunicorn's workers, never reachable through nginx."""

from __future__ import annotations

import re
import subprocess
import uuid

from tests.stack import Stack

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
