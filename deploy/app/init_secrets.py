"""Give this installation its own secrets, once: the `secrets` step of docker-compose.yml.

For each secret, the file in SECRETS_DIR is written from the variable of the
same name when one is given (.env), or else filled with a random value the
first time and kept from then on, in a named volume that survives restarts
and `docker compose down`. The app, the migrate step and Postgres then read
the files through DJANGO_SECRET_KEY_FILE, POSTGRES_PASSWORD_FILE and
API_TOKEN_FILE. Values are never printed.

API_TOKEN is not generated: without one, POST /books/ stays disabled (403).
"""

import os
import secrets
import sys
from pathlib import Path

GENERATED = ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD")
OPTIONAL = ("API_TOKEN",)


def write(path: Path, value: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n", encoding="utf-8")
    # Readable by the other containers' users (postgres is uid 999); the
    # volume is mounted only into this stack's app, migrate and db.
    tmp.chmod(0o644)
    tmp.replace(path)


def main() -> int:
    directory = Path(os.environ.get("SECRETS_DIR", "/srv/secrets"))
    if not directory.is_dir():
        print(f"init_secrets: {directory} is not a directory (is the volume mounted?)", file=sys.stderr)
        return 1
    for name in GENERATED + OPTIONAL:
        path = directory / name.lower()
        given = os.environ.get(name, "")
        if given:
            write(path, given)
            print(f"init_secrets: {name} taken from the environment")
        elif name in OPTIONAL:
            write(path, "")
            print(f"init_secrets: {name} not set")
        elif not path.exists():
            write(path, secrets.token_urlsafe(48))
            print(f"init_secrets: {name} generated for this installation")
        else:
            print(f"init_secrets: {name} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
