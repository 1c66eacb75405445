"""The site's certificate: obtained and renewed with certbot over HTTP-01, handed to nginx.

Run by: the `acme` service of deploy/compose/https.yml, as `acme.py run`; by hand,
`docker compose exec acme python3 /srv/acme/acme.py renew --force`. Copying it: set SITE_DOMAINS and
ACME_EMAIL (.env.example, "HTTPS"). Why and how: docs/production-vm.md, "The certificate".
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

STATE = Path("/var/lib/acme")  # certbot's configuration, account and certificates: this service's alone
CERTS = Path("/srv/certs")  # what nginx reads: live/fullchain.pem and live/privkey.pem
WEBROOT = Path("/var/www/acme")  # HTTP-01 tokens, served by nginx under /.well-known/acme-challenge/
LINEAGE = "site"  # certbot's name for the certificate
ISSUED = STATE / "issued.json"  # the CA and names of the last certificate issued
# nginx's plain-HTTP port, as this service reaches it (the `acme` network).
NGINX = "http://nginx:8080"
HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")


class ConfigError(Exception):
    pass


def log(level: str, message: str) -> None:
    """One JSON line, as the app and nginx write theirs (docs/observability.md)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    print(json.dumps({"time": now, "level": level, "logger": "acme", "message": message}), file=sys.stderr, flush=True)


def _seconds(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of seconds, at least 1, not {raw!r}")
    return int(raw)


class Settings:
    def __init__(self, environ: dict[str, str]) -> None:
        raw = environ.get("SITE_DOMAINS", "")
        self.domains = [d.strip().lower().rstrip(".") for d in raw.split(",") if d.strip()]
        if not self.domains:
            raise ConfigError("SITE_DOMAINS is empty: set it to the site's names, e.g. example.com,www.example.com")
        if bad := [d for d in self.domains if not HOSTNAME.match(d)]:
            raise ConfigError(
                f"SITE_DOMAINS: not a host name a certificate can be issued for over HTTP-01: {', '.join(bad)} "
                "(no wildcards, no addresses, no ports)"
            )
        self.email = environ.get("ACME_EMAIL", "").strip()
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", self.email):
            raise ConfigError(f"ACME_EMAIL must be an e-mail address the CA can write to, not {self.email!r}")
        # Empty: certbot's default, Let's Encrypt's production directory.
        self.directory = environ.get("ACME_DIRECTORY", "").strip()
        self.check_interval = _seconds("ACME_CHECK_INTERVAL", 12 * 3600)
        self.retry_interval = _seconds("ACME_RETRY_INTERVAL", 600)

    @property
    def issuing(self) -> dict[str, object]:
        return {"directory": self.directory, "domains": sorted(self.domains)}


def certbot(settings: Settings, force: bool) -> subprocess.CompletedProcess[str]:
    """`certbot certonly`: a certificate for the names, unless the one it has is good for a while yet."""
    last = json.loads(ISSUED.read_text()) if ISSUED.exists() else None
    command = [
        "certbot", "certonly", "--non-interactive", "--agree-tos", "--email", settings.email,
        "--webroot", "--webroot-path", str(WEBROOT), "--cert-name", LINEAGE,
        "--domains", ",".join(settings.domains),
        # Renews only within the renewal window (30 days before expiry, or when
        # the CA's renewal information says so); a changed name or CA needs a new one now.
        "--keep-until-expiring", "--expand",
        "--config-dir", str(STATE / "config"), "--work-dir", str(STATE / "work"),
        "--logs-dir", "/tmp/certbot",  # noqa: S108  (the container's own tmpfs)
    ]  # fmt: skip
    if settings.directory:
        command += ["--server", settings.directory]
    if force or (last is not None and last != settings.issuing):
        command.append("--force-renewal")
    return subprocess.run(command, capture_output=True, text=True, timeout=600)  # noqa: S603  (no shell; our own arguments)


def _reason(result: subprocess.CompletedProcess[str]) -> str:
    """certbot's own account of a failure, on one line."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    noise = ("Saving debug log", "Ask for help", "See the logfile", "Some challenges have failed", "Hint:")
    return " | ".join(line for line in lines if not line.startswith(noise))[:2000] or f"exit status {result.returncode}"


def _expiry(fullchain: Path) -> str:
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(fullchain.read_bytes())
    return certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")


def publish(fullchain: bytes, privkey: bytes, label: str) -> bool:
    """Make these nginx's certificate, whole and at once. False when they already are."""
    live = CERTS / "live"
    if live.exists() and (live / "fullchain.pem").read_bytes() == fullchain:
        return False
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    generation = CERTS / f"{label}-{stamp}"
    generation.mkdir(mode=0o755)
    # Readable by nginx's master, which runs as root without capabilities: the
    # volume is mounted only here and (read-only) in nginx, whose workers hold
    # the key in memory anyway.
    for name, data in (("privkey.pem", privkey), ("fullchain.pem", fullchain)):
        path = generation / name
        path.write_bytes(data)
        path.chmod(0o644)
    swap = CERTS / f".live-{stamp}"
    swap.symlink_to(generation.name)
    swap.replace(live)
    older = sorted((p for p in CERTS.iterdir() if p.is_dir() and not p.is_symlink() and p != generation),
                   key=lambda p: p.stat().st_mtime)  # fmt: skip
    for old in older[:-1]:
        shutil.rmtree(old, ignore_errors=True)  # keeps the one before, for a reload still under way
    return True


def placeholder(settings: Settings) -> None:
    """Until the CA issues one, a self-signed certificate, so nginx can start and answer the challenge."""
    if (CERTS / "live").exists():
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, settings.domains[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in settings.domains]), critical=False)
        .sign(key, hashes.SHA256())
    )
    publish(
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        "placeholder",
    )
    log("warning", f"no certificate yet for {', '.join(settings.domains)}: serving a self-signed placeholder")


def nginx_serves_challenges(wait: float = 60) -> bool:
    """Whether nginx serves the challenge directory yet: asking the CA before it does fails the
    validation, and the CA counts failures (Let's Encrypt: 5 an hour per name)."""
    challenges = WEBROOT / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True, exist_ok=True)
    probe = challenges / f"probe-{uuid.uuid4().hex}"
    probe.write_text(probe.name)
    probe.chmod(0o644)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                url = f"{NGINX}/.well-known/acme-challenge/{probe.name}"
                with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310  (http, ours)
                    if answer.read().decode() == probe.name:
                        return True
            except OSError:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(1)
    finally:
        probe.unlink(missing_ok=True)


def ensure(settings: Settings, force: bool = False) -> bool:
    """One round: obtain or renew if due, then hand a new certificate to nginx. True on success."""
    ca = settings.directory or "Let's Encrypt"
    if not nginx_serves_challenges():
        log("error", f"nginx does not serve {NGINX}/.well-known/acme-challenge/ (from the acme-challenge volume): "
                     "not asking the CA, whose validation would fail")  # fmt: skip
        return False
    result = certbot(settings, force)
    if result.returncode != 0:
        live = CERTS / "live" / "fullchain.pem"
        current = f"the current certificate (expires {_expiry(live)})" if live.exists() else "no certificate"
        log("error", f"could not obtain a certificate for {', '.join(settings.domains)} from {ca}: "
                     f"{_reason(result)}; serving {current} meanwhile")  # fmt: skip
        return False
    ISSUED.write_text(json.dumps(settings.issuing))
    lineage = STATE / "config" / "live" / LINEAGE
    fullchain = (lineage / "fullchain.pem").read_bytes()
    if publish(fullchain, (lineage / "privkey.pem").read_bytes(), "cert"):
        log("info", f"new certificate for {', '.join(settings.domains)} from {ca}, "
                    f"expires {_expiry(lineage / 'fullchain.pem')}: handed to nginx")  # fmt: skip
    else:
        log("info", f"certificate for {', '.join(settings.domains)} is good until "
                    f"{_expiry(lineage / 'fullchain.pem')}; next check in {settings.check_interval} s")  # fmt: skip
    return True


def run(settings: Settings) -> None:
    """Forever: a round, then wait; after a failure, wait less, doubling up to the check interval."""
    placeholder(settings)
    retry = settings.retry_interval
    while True:
        if ensure(settings):
            retry = settings.retry_interval
            time.sleep(settings.check_interval)
        else:
            log("info", f"next try in {retry} s")
            time.sleep(retry)
            retry = min(retry * 2, settings.check_interval)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "run"
    if command == "health":  # the container's healthcheck: nginx has a certificate to start with
        return 0 if (CERTS / "live" / "fullchain.pem").exists() else 1
    try:
        settings = Settings(dict(os.environ))
    except ConfigError as error:
        log("error", str(error))
        return 2
    if command == "run":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        run(settings)
    elif command == "renew":
        placeholder(settings)
        return 0 if ensure(settings, force="--force" in argv[2:]) else 1
    else:
        log("error", f"unknown command {command!r}: run, renew [--force] or health")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
