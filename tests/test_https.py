"""nginx's own HTTPS (deploy/compose/https.yml) against a real ACME CA: Pebble, which validates
each HTTP-01 challenge by fetching it from nginx (tests/compose.acme.yml).

One stack for the module, its web ports on 127.0.0.1; the clients trust Pebble's
root alone. The failure tests come last: they stop the CA.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from sslyze import (
    Scanner,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.plugins.session_resumption.implementation import TlsResumptionSupportEnum

from harness.stack import ROOT, Response, Stack, exchange, free_port, http_request

NAMES = ("blueprint.test", "www.blueprint.test")
# sslyze's own copy of Mozilla's trust store holds a root with a serial cryptography frowns upon.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")
ACME = "python3", "/srv/acme/acme.py"


@dataclass
class Site:
    stack: Stack
    http_port: int
    https_port: int
    root: str | None = None

    def pebble_root(self) -> str:
        """The root Pebble signs with, made anew each time it starts: the one of the first start."""
        if self.root is None:
            fetch = ("curl", "--silent", "--fail", "--insecure", "https://127.0.0.1:15000/roots/0")
            self.root = self.stack.exec("pebble", *fetch).stdout
        return self.root

    def context(self, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.pebble_root())  # that root, and nothing else
        context.set_alpn_protocols(list(alpn))
        return context

    def tls(self, name: str = NAMES[0], alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=15)
        return self.context(alpn).wrap_socket(raw, server_hostname=name)

    def certificate(self) -> x509.Certificate:
        with self.tls() as connection:
            return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True))

    def served_serial(self) -> int:
        """The serial of what is served, unverified: Pebble makes a new root whenever it restarts."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=15)
        with context.wrap_socket(raw, server_hostname=NAMES[0]) as connection:
            return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True)).serial_number

    def connection(self, name: str = NAMES[0], timeout: float = 15) -> http.client.HTTPSConnection:
        site = self

        class Connection(http.client.HTTPSConnection):
            def connect(self) -> None:
                self.sock = site.tls(name)
                self.sock.settimeout(timeout)

        return Connection(name, self.https_port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Response:
        return exchange(self.connection(), method, path, body, headers)

    def plain(self, path: str, name: str = NAMES[0]) -> Response:
        return http_request(self.http_port, "GET", path, headers={"Host": name})

    def acme(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.stack.exec("acme", *ACME, *args, check=check)

    def wait_for_certificate(self, other_than: int | None, timeout: float = 60) -> x509.Certificate:
        """The served certificate once Pebble's (not the placeholder) and not the one with serial `other_than`,
        on every new connection for a second: for a moment after a reload, nginx's old workers may still
        accept one (reuseport) and answer with the certificate they started with."""
        deadline = time.monotonic() + timeout
        settled_since: float | None = None
        while True:
            try:
                served = self.certificate()
                fresh = served.serial_number != other_than
            except (ssl.SSLError, OSError):  # the placeholder, which Pebble's root does not sign
                fresh = False
            if not fresh:
                settled_since = None
            elif settled_since is None:
                settled_since = time.monotonic()
            elif time.monotonic() - settled_since >= 1.0:
                return served
            if time.monotonic() > deadline:
                raise AssertionError(f"no new certificate within {timeout} s:\n{self.stack.logs('acme')[-3000:]}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def site(stack: Stack) -> Iterator[Site]:
    """The HTTPS stack, up, with the CA's certificate served."""
    http_port, https_port = free_port(), free_port()
    env = {
        "SITE_DOMAINS": ",".join(NAMES),
        "ACME_EMAIL": "admin@blueprint.test",
        "HTTPS_BIND": "127.0.0.1",
        "HTTP_PORT": str(http_port),
        "HTTPS_PORT": str(https_port),
        "NGINX_CERTIFICATE_INTERVAL": "1",
    }
    files = (ROOT / "deploy" / "compose" / "https.yml", ROOT / "tests" / "compose.acme.yml")
    with stack.sibling("https", 160, env, extra_files=files).running() as https:
        site = Site(https, http_port, https_port)
        site.wait_for_certificate(other_than=None)
        yield site


# --- Getting the certificate ---------------------------------------------------------------
def test_the_ca_issued_the_certificate_through_http_01(site: Site):
    served = site.certificate()  # verified against Pebble's root alone, for the name
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert sorted(names) == sorted(NAMES)
    assert "Pebble" in served.issuer.rfc4514_string()
    # Pebble fetched each name's token from nginx, over the test network.
    pebble = site.stack.logs("pebble")
    for name in NAMES:
        assert f"http://{name}:8080/.well-known/acme-challenge/" in pebble, pebble[-3000:]
    assert "new certificate for blueprint.test, www.blueprint.test" in site.stack.logs("acme")
    with site.tls(NAMES[1]) as other:  # the second name, by SNI, verified too
        assert other.version() in {"TLSv1.2", "TLSv1.3"}


def test_the_acme_client_is_confined_and_nothing_gets_the_docker_socket(site: Site):
    config = json.loads(site.stack.compose("config", "--format", "json").stdout)
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            assert "docker.sock" not in str(volume.get("source", "")), name
    inspect = ["docker", "inspect", "--format", "{{json .}}", site.stack.container_id("acme")]
    acme = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
    host = acme["HostConfig"]
    assert acme["Config"]["User"] not in ("", "0", "root") and not acme["Config"]["User"].startswith("0:")
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    # Its networks: the way out to the CA (and to nginx's challenge port), not the app's or the database's.
    assert set(acme["NetworkSettings"]["Networks"]) == {f"{site.stack.project}_acme"}


# --- Serving -----------------------------------------------------------------------------------
ROUTES = {
    "/": 200,
    "/now/": 200,
    "/async/": 200,
    "/books/": 200,
    "/books/embed/": 200,
    "/sync-wrapped/": 200,
    "/healthz": 200,
    "/readyz": 200,
    "/admin/login/": 200,
    "/admin/": 302,
    "/static/admin/css/base.css": 200,
}


def test_every_route_over_https(site: Site):
    hsts = "max-age=31536000; includeSubDomains"
    for path, status in ROUTES.items():
        answer = site.request("GET", path)
        assert answer.status == status, (path, answer.status, answer.body[:300])
        # The probes answer before any middleware (core.middleware.HealthCheckMiddleware), headers included.
        if path not in ("/healthz", "/readyz"):
            assert answer.headers.get("strict-transport-security") == hsts, path
    created = site.request(
        "POST", "/books/", json.dumps({"title": "over https"}).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {site.stack.api_token}"},
    )  # fmt: skip
    assert created.status == 201, created.body
    assert b"over https" in site.request("GET", "/books/").body


def test_http_2_and_tls_1_3_are_offered(site: Site):
    with site.tls(alpn=("h2", "http/1.1")) as connection:
        assert connection.selected_alpn_protocol() == "h2"
        assert connection.version() == "TLSv1.3"


def test_events_stream_unbuffered_over_https(site: Site):
    conn = site.connection(timeout=20)
    try:
        started = time.monotonic()
        conn.request("GET", "/events/?count=4")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
        arrivals = []
        while len(arrivals) < 4:
            line = response.fp.readline()
            assert line, "the stream ended early"
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic() - started)
    finally:
        conn.close()
    # One event a second, each as it is written: the first long before the last.
    assert arrivals[0] < 2.5 and arrivals[-1] - arrivals[0] > 2, arrivals


def test_plain_http_redirects_to_https_except_the_challenges(site: Site):
    moved = site.plain("/books/?page=2")
    assert moved.status == 301 and moved.headers["location"] == "https://blueprint.test/books/?page=2"
    assert site.plain("/", name=NAMES[1]).headers["location"] == "https://www.blueprint.test/"
    token = "t0ken-" + str(time.monotonic_ns())
    site.stack.exec("acme", "sh", "-c", f"echo {token} > /var/www/acme/.well-known/acme-challenge/{token}")
    try:
        served = site.plain(f"/.well-known/acme-challenge/{token}")
        assert served.status == 200 and served.text().strip() == token
        assert served.headers["content-type"].startswith("text/plain")
    finally:
        site.stack.exec("acme", "rm", f"/var/www/acme/.well-known/acme-challenge/{token}")
    assert site.plain("/.well-known/acme-challenge/unknown").status == 404


def test_django_follows_the_domain(site: Site):
    settings = site.stack.exec(
        "app", "python", "manage.py", "shell", "-c",
        "import json; from django.conf import settings as s; print(json.dumps([s.ALLOWED_HOSTS, "
        "s.CSRF_TRUSTED_ORIGINS, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE]))",
    ).stdout  # fmt: skip
    hosts, origins, redirect, session_secure, csrf_secure = json.loads(settings.strip().splitlines()[-1])
    assert hosts == list(NAMES) and origins == [f"https://{name}" for name in NAMES]
    assert redirect and session_secure and csrf_secure
    deploy = site.stack.exec("app", "python", "manage.py", "check", "--deploy", "--fail-level", "WARNING", check=False)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    # Another name is refused by the app, over https too.
    conn = site.connection()
    try:
        conn.request("GET", "/", headers={"Host": "elsewhere.test"})
        assert conn.getresponse().status == 400
    finally:
        conn.close()


def is_the_cas(finding: str) -> bool:
    """A finding about the certificate itself (its trust, its lifespan): what the CA issues, not nginx's settings."""
    return finding.startswith("certificate") or finding.endswith("certificate_lifespan")


def test_a_tls_scanner_finds_nothing_weak(site: Site):
    """sslyze against Mozilla's "intermediate" profile. The certificate's own findings are the CA's
    (Pebble's: not a public root, five years' validity), not nginx's, and are left out."""
    location = ServerNetworkLocation(hostname=NAMES[0], port=site.https_port, ip_address="127.0.0.1")
    commands = {*SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER, ScanCommand.SESSION_RESUMPTION}
    scanner = Scanner()
    scanner.queue_scans([ServerScanRequest(server_location=location, scan_commands=commands)])
    (result,) = scanner.get_results()
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    try:
        check_server_against_tls_configuration(
            result, MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
        )
        issues: dict[str, str] = {}
    except ServerNotCompliantWithTlsConfiguration as failed:
        issues = {key: text for key, text in failed.issues.items() if not is_the_cas(key)}
    assert issues == {}, issues
    scans = result.scan_result
    for old in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"):
        assert not getattr(scans, old).result.is_tls_version_supported, old
    assert scans.tls_1_2_cipher_suites.result.is_tls_version_supported
    assert scans.tls_1_3_cipher_suites.result.is_tls_version_supported
    resumption = scans.session_resumption.result
    # Sessions resume from nginx's cache; never from a ticket, whose key would outlive them.
    assert resumption.session_id_resumption_result == TlsResumptionSupportEnum.FULLY_SUPPORTED
    assert resumption.tls_ticket_resumption_result == TlsResumptionSupportEnum.NOT_SUPPORTED


# --- Renewal -------------------------------------------------------------------------------
def test_renewal_replaces_the_certificate_while_a_stream_stays_open(site: Site):
    before = site.certificate()
    conn = site.connection(timeout=30)
    conn.request("GET", "/events/?count=12")
    stream = conn.getresponse()
    events: list[dict] = []
    failures: list[str] = []
    done = threading.Event()

    def read_stream() -> None:
        for line in iter(stream.fp.readline, b""):
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))

    def keep_asking() -> None:
        while not done.is_set():
            try:
                status = site.request("GET", "/now/").status
                if status != 200:
                    failures.append(f"status {status}")
            except OSError as error:
                failures.append(repr(error))
            time.sleep(0.05)

    threads = [threading.Thread(target=read_stream), threading.Thread(target=keep_asking)]
    for thread in threads:
        thread.start()
    try:
        while not events:
            time.sleep(0.1)
        renewed = site.acme("renew", "--force")
        assert renewed.returncode == 0, renewed.stdout + renewed.stderr
        after = site.wait_for_certificate(other_than=before.serial_number, timeout=30)
        assert after.not_valid_before_utc >= before.not_valid_before_utc
        threads[0].join(timeout=30)
    finally:
        done.set()
        conn.close()
        for thread in threads:
            thread.join(timeout=30)
    # The stream, opened before the reload, ran to its end on the old worker.
    assert [event["n"] for event in events] == list(range(1, 13))
    assert failures == [], failures[:5]
    assert "loaded" in site.stack.logs("nginx")


# --- Failures ------------------------------------------------------------------------------
def test_a_name_that_is_not_ours_fails_clearly_and_changes_nothing(site: Site):
    served = site.served_serial()
    failed = site.stack.compose(
        "run", "--rm", "--no-deps", "-e", "SITE_DOMAINS=blueprint.test,elsewhere.test", "acme", *ACME, "renew",
        check=False, timeout=300,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "could not obtain a certificate for blueprint.test, elsewhere.test" in failed.stderr
    assert "elsewhere.test" in failed.stderr.split("could not obtain", 1)[1]
    assert site.served_serial() == served


@pytest.mark.parametrize("value", ["", "*.blueprint.test", "blueprint.test:443", "10.0.0.1"])
def test_bad_names_are_refused_before_asking_the_ca(site: Site, value: str):
    refused = site.stack.compose(
        "run", "--rm", "--no-deps", "-e", f"SITE_DOMAINS={value}", "acme", *ACME, "renew", check=False, timeout=120
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "SITE_DOMAINS" in refused.stderr


def test_a_failed_issuance_keeps_the_site_serving(site: Site):
    served = site.served_serial()
    site.stack.compose("stop", "pebble")
    try:
        # The CA down: the renewal fails with a clear line; the site keeps its certificate.
        failed = site.acme("renew", "--force")
        assert failed.returncode == 1
        assert "could not obtain a certificate for blueprint.test, www.blueprint.test" in failed.stderr
        assert "serving the current certificate" in failed.stderr
        assert site.served_serial() == served
        # The service itself, restarted while the CA is down, waits and tries again: no crash loop.
        site.stack.compose("restart", "acme")
        deadline = time.monotonic() + 60
        while "next try in" not in site.stack.logs("acme") and time.monotonic() < deadline:
            time.sleep(1)
        inspect = ["docker", "inspect", "--format", "{{json .State}}", site.stack.container_id("acme")]
        state = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
        assert state["Status"] == "running" and state["Restarting"] is False, state
        assert "next try in" in site.stack.logs("acme")
        assert site.request("GET", "/readyz").status == 200
    finally:
        site.stack.compose("start", "pebble")


def test_the_account_and_certificate_survive_down_and_up(site: Site):
    before = site.served_serial()
    site.stack.compose("down", "--timeout", "10")  # the volumes stay
    site.stack.up()
    assert site.served_serial() == before
    logs = site.stack.logs("acme")
    assert "placeholder" not in logs and "new certificate" not in logs, logs[-2000:]
