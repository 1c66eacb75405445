"""Give this installation its own secrets, once: the `secrets` step of docker-compose.yml.

Each file in SECRETS_DIR (the `secrets` volume) is copied from the one given for it (DJANGO_SECRET_KEY_FILE ...
in .env, mounted at GIVEN_DIR/<name>), or else filled with a random value once and kept. Values are never
printed and never pass through an environment variable; API_TOKEN is never generated (no token: no writes).
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


def given(directory: Path, name: str) -> str:
    """The value given for `name` as a file, or "" (none given: compose mounts /dev/null)."""
    path = directory / name.lower()
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except PermissionError:
        raise SystemExit(
            f"init_secrets: cannot read the file given as {name}_FILE: the containers' user (uid {os.getuid()}) "
            "must be able to read it: chmod 644 the file, and keep its directory private (chmod 700)"
        ) from None


def main() -> int:
    as_values = os.environ.get("SECRETS_GIVEN_AS_VALUES", "").split()
    if as_values:
        for name in as_values:
            print(
                f"init_secrets: {name} is set as a value (in .env or the shell), where `docker inspect` would "
                f"show it; write it to a file and set {name}_FILE to that file's path instead (.env.example)",
                file=sys.stderr,
            )
        return 1
    directory = Path(os.environ.get("SECRETS_DIR", "/srv/secrets"))
    given_dir = Path(os.environ.get("GIVEN_DIR", "/run/secrets"))
    if not directory.is_dir():
        print(f"init_secrets: {directory} is not a directory (is the volume mounted?)", file=sys.stderr)
        return 1
    for name in GENERATED + OPTIONAL:
        path = directory / name.lower()
        value = given(given_dir, name)
        if value:
            write(path, value)
            print(f"init_secrets: {name} taken from the file given as {name}_FILE")
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
