"""The app container's healthcheck: GET on the liveness probe (core/probes.py) at gunicorn's port.

Run by: docker-compose.yml (healthcheck of `app`). The slim Python image has no
curl, so this uses the standard library. Exit 0 when healthy, 1 otherwise.
"""

import os
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))  # /srv/app, for core.probes
from core.probes import LIVENESS  # plain Python: no Django

url = f"http://127.0.0.1:{os.environ.get('PORT') or 8000}{LIVENESS}"
try:
    with urllib.request.urlopen(url, timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthcheck: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
