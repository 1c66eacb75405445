"""One log format for everything the app container prints: JSON lines with the request id.

Used by Django (settings.LOGGING) and by gunicorn and its Uvicorn workers
(deploy/gunicorn/gunicorn.conf.py, logconfig_dict), so error lines, access
lines and the app's own lines can be searched together. nginx makes the
request id ($request_id) and sends it as X-Request-ID; RequestIdMiddleware
puts it in a context variable for the request's lines, and in the response.
No Django import here: gunicorn's master loads this before Django exists.
"""

import contextvars
import datetime
import json
import logging

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Attributes every LogRecord has; anything else was passed in `extra` and is kept.
# uvicorn's color_message is its message again, with terminal colours.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            # uvicorn's access line: client, method, path, HTTP version, status.
            client, method, path, version, status = record.args
            entry.update(message=f"{method} {path} {status}", client=client, method=method, path=path,
                         http_version=version, status=status)  # fmt: skip
        else:
            entry["message"] = record.getMessage()
        current = request_id.get()
        if current:
            entry["request_id"] = current
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
