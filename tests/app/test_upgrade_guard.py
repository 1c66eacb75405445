"""The upgrade guard: every internal of Django, asgiref, whitenoise, uvicorn, uvicorn-worker, gunicorn,
psycopg_pool and django-tasks-db that the project copies, re-implements or relies on, pinned by a hash of its source.

An upgrade that changes any of them fails here, naming the project file to
review. Review it against the new code (and rerun tests/django_suite and
tests/uvicorn_suite, which the test command does), then update the digest.
"""

import hashlib
import importlib
import inspect

import pytest

HANDLER = "app/core/handlers.py"
MIDDLEWARE = "app/core/middleware.py"
DROPINS = "app/core/dropins.py"
WORKER = "deploy/gunicorn/workers.py"
PROTOCOL = "deploy/gunicorn/protocol.py"
DBPOOL = "app/core/dbpool.py"
TASK_WORKER = "app/worker/run.py, app/worker/reaper.py, app/worker/management/commands/run_worker.py"

# The project file that depends on them -> dotted path -> (the first 12 hex digits of the
# sha256 of its source, how the file depends on it).
REVIEWED: dict[str, dict[str, tuple[str, str]]] = {
    HANDLER: {
        "django.core.handlers.asgi.ASGIHandler.__call__": ("f756809e9c93", "copied"),
        "django.core.handlers.asgi.ASGIHandler.handle": ("c91f27c7fcdc", "copied"),
        "django.core.handlers.asgi.ASGIHandler.run_get_response": ("0234ea5fe09a", "extended: sets the sender"),
        "django.http.request.HttpRequest.close": ("9a2302ad30a2", "closes on the event loop without a thread"),
        "django.core.handlers.asgi.ASGIRequest.close": ("60e2d9a1933d", "closes on the event loop without a thread"),
        "django.core.handlers.base.BaseHandler.load_middleware": ("b75c13d1041e", "copied"),
        "django.http.response.HttpResponseBase.close": ("84589f5b23ac", "close_response() does its work"),
        "django.dispatch.dispatcher.Signal.asend": ("251720ef0674", "send_request_signal() does its work"),
        "django.core.handlers.base.reset_urlconf": ("7ad5ce3f320f", "_reset_urlconf() does its work"),
        "django.core.cache.close_caches": ("abe7badf0640", "skipped unless a cache has a close()"),
        "django.core.cache.backends.base.BaseCache.close": ("d6b55968d67c", "taken to do nothing"),
        "django.db.reset_queries": ("9989bcde56b2", "taken to do nothing in a new thread"),
        "django.db.close_old_connections": ("c352dd45e833", "taken to do nothing in a new thread"),
        "asgiref.sync.ThreadSensitiveContext": ("da8ec00f861b", "__call__() enters a context as it does"),
        "asgiref.sync.SyncToAsync.__call__": ("6376e33c6d3d", "how it picks the request's executor"),
        "django.dispatch.dispatcher.Signal._live_receivers": ("79c68a4b8a99", "called"),
        "django.dispatch.dispatcher._run_parallel": ("3fdb03c23648", "called"),
    },
    WORKER: {
        "uvicorn_worker.UvicornWorker._serve": ("eb799ef03d63", "copied"),
        "uvicorn_worker.UvicornWorker.__init__": ("d51a1f9f91fd", "builds the config it extends"),
        "uvicorn_worker.UvicornWorker.run": ("00ca1919b3ed", "runs _serve() on the config's loop"),
        "uvicorn_worker.UvicornWorker._install_sigquit_handler": ("f57d52d7c31e", "called"),
        "uvicorn.server.Server._serve": ("4575b7a50adf", "calls shutdown() after serving"),
        "uvicorn.server.Server.startup": ("2aa1d70a244b", "exits with STARTUP_FAILURE on a boot error"),
        "uvicorn.server.Server.shutdown": ("9b33c5056299", "DrainingServer.shutdown() runs before it"),
        "uvicorn.config.Config.__init__": ("98e927ea97a7", "CONFIG_KWARGS"),
        "gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR": ("4e07408562be", "exit status"),
    },
    MIDDLEWARE: {
        "whitenoise.middleware.WhiteNoiseMiddleware": ("965dcd1cf7d6", "StaticFilesMiddleware serves as it does"),
    },
    DROPINS: {
        "django.utils.deprecation.MiddlewareMixin": ("719062a11086", "NoHopMixin.__acall__() replaces __acall__()"),
        "django.middleware.security.SecurityMiddleware": ("7c0daafdd127", "hooks taken to do no I/O"),
        "django.middleware.common.CommonMiddleware": ("d9906d67016a", "hooks taken to do no I/O"),
        "django.middleware.clickjacking.XFrameOptionsMiddleware": ("b005c3dcd168", "hooks taken to do no I/O"),
        "django.middleware.csp.ContentSecurityPolicyMiddleware": ("23c2cd6da037", "hooks taken to do no I/O"),
        "django.utils.csp.LazyNonce": ("3a463a4c5b73", "no I/O"),
        "django.utils.csp.build_policy": ("2f6458ea134b", "no I/O"),
        "django.middleware.csrf.CsrfViewMiddleware": ("d5f006440158", "I/O only with sessions or a form"),
        "django.contrib.auth.middleware.AuthenticationMiddleware": ("016788fb7214", "hooks taken to do no I/O"),
        "django.contrib.sessions.middleware.SessionMiddleware": ("81dfc7bdab25", "I/O only to save"),
        "django.contrib.sessions.backends.base.SessionBase.__init__": ("f78360c7a649", "no I/O"),
        "django.contrib.sessions.backends.base.SessionBase.is_empty": ("5b67db5dbc02", "no I/O"),
        "django.contrib.sessions.backends.db.SessionStore.__init__": ("0cbd3599a781", "no I/O"),
        "django.contrib.sessions.backends.cache.SessionStore.__init__": ("55c4ac4df0f8", "no I/O"),
        "django.contrib.sessions.backends.cached_db.SessionStore.__init__": ("55c4ac4df0f8", "no I/O"),
        "django.contrib.sessions.backends.signed_cookies.SessionStore": ("6d92ca7422d9", "no I/O until saved"),
        "django.contrib.messages.middleware.MessageMiddleware": ("68bbf99a11d6", "storage built lazily"),
        "django.contrib.messages.storage.base.BaseStorage": ("659b6758a4ab", "update() stores only if used"),
        "django.contrib.messages.storage.fallback.FallbackStorage.__init__": ("fb57faebed17", "no I/O"),
        "django.contrib.messages.storage.cookie.CookieStorage.__init__": ("b52e85487c36", "no I/O"),
        "django.contrib.messages.storage.session.SessionStorage.__init__": ("846de48efc69", "no I/O"),
    },
    PROTOCOL: {
        "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol": ("18fdf324b11b", "subclassed, transport wrapped"),
        "uvicorn.protocols.http.httptools_impl.RequestResponseCycle": ("e67d470d435d", "writes to the transport"),
        "uvicorn.config.Config.load": ("92b7159dce10", "takes the http class as given"),
        "uvicorn.protocols.http.flow_control.FlowControl": ("126debcdaa89", "reads the transport's buffer size"),
    },
    DBPOOL: {
        "psycopg_pool.pool.ConnectionPool._getconn_unchecked": ("5cddc70ef115", "a timed-out waiter stays queued"),
        "psycopg_pool.pool.ConnectionPool._get_ready_connection": ("99b699260c88", "max_waiting counts the queue"),
        "psycopg_pool.pool.ConnectionPool._return_connection": ("282265749082", "skips waiters that are gone"),
        "psycopg_pool.pool.WaitingClient": ("f00fae1f8146", "conn and error say a wait ended"),
    },
    TASK_WORKER: {
        "django_tasks_db.management.commands.db_worker.Worker.run": ("99b3cb9412f2", "extended: the keeper beside it"),
        "django_tasks_db.management.commands.db_worker.Worker.run_task": (
            "f317615342cf",
            "extended: records an interruption as FAILED, which run.py turns back into READY",
        ),
        "django_tasks_db.management.commands.db_worker.Worker.shutdown": ("830354e8c56f", "extended: the deadline"),
        "django_tasks_db.management.commands.db_worker.Worker.configure_signals": ("21a19efc54cd", "extended"),
        "django_tasks_db.management.commands.db_worker.Command.handle": ("f4126866e419", "copied, with our Worker"),
        "django_tasks_db.models.DBTaskResult.claim": ("04900eaecf8a", "worker_ids counts the claims"),
        "django_tasks_db.models.DBTaskResult.set_failed": ("ce4256ecd879", "the reaper records WorkerLost"),
        "django_tasks_db.models.DBTaskResultQuerySet.ready": ("0ada290f2e29", "READY is what the reaper sets"),
    },
}
CASES = {
    path: (expected, f"{dependant}: {how}")
    for dependant, paths in REVIEWED.items()
    for path, (expected, how) in paths.items()
}


def resolve(path: str) -> object:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = inspect.getattr_static(target, name) if inspect.isclass(target) else getattr(target, name)
        return target
    raise ImportError(path)


def digest(path: str) -> str:
    target = resolve(path)
    if isinstance(target, (staticmethod, classmethod)):
        target = target.__func__
    source = repr(target) if isinstance(target, (int, str)) else inspect.getsource(target)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


@pytest.mark.parametrize("path", CASES)
def test_borrowed_code_is_unchanged(path):
    expected, dependant = CASES[path]
    assert digest(path) == expected, f"{path} changed upstream: review {dependant}, then update its digest here"
