"""The floor to measure against: a bare ASGI app with the benchmark's routes, no Django.

Served by the same gunicorn and Uvicorn worker as the blueprint
(`gunicorn -c ... --chdir /srv/bench raw_asgi:app`), so the difference between
the two is what Django costs.
"""

import asyncio
import datetime
from urllib.parse import parse_qs


async def app(scope: dict, receive: object, send: object) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    if path == "/healthz":
        await respond(send, b"ok\n", b"text/plain")
    elif path == "/async/":
        await asyncio.sleep(float(query.get("seconds", ["1"])[0]))
        await respond(send, "非同期ビューのレスポンス".encode(), b"text/plain; charset=utf-8")
    elif path == "/now/":
        body = f"<html><body>It is now {datetime.datetime.now()}.</body></html>".encode()
        await respond(send, body, b"text/html; charset=utf-8")
    elif path == "/events/":
        count = int(query.get("count", ["5"])[0])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for n in range(1, count + 1):
            if n > 1:
                await asyncio.sleep(1)
            await send({"type": "http.response.body", "body": f"id: {n}\ndata: {n}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await respond(send, b"not found", b"text/plain", status=404)


async def respond(send: object, body: bytes, content_type: bytes, status: int = 200) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
