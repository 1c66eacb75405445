"""The server is draining: responses that could outlast it should end now.

begin() is config.asgi.on_drain(), which the worker calls as its graceful shutdown starts. Long
responses (Server-Sent Events) wait with sleep() below instead of asyncio.sleep(): it returns early
once the drain has begun. See docs/architecture.md, "The worker" (a drain notice).
"""

import asyncio

_draining = False
# The sleep() calls in progress, woken by begin(). Futures rather than one
# asyncio.Event: an Event belongs to the first event loop that waits on it,
# and tests run views on many loops.
_sleepers: set[asyncio.Future[None]] = set()


def begin() -> None:
    """Mark the drain as begun and wake every sleep(); called on the worker's event loop."""
    global _draining
    _draining = True
    for sleeper in list(_sleepers):
        sleeper.get_loop().call_soon_threadsafe(_wake, sleeper)


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)


def is_draining() -> bool:
    return _draining


async def sleep(seconds: float) -> bool:
    """Like asyncio.sleep(seconds), but return True at once if the drain begins."""
    if _draining:
        return True
    sleeper = asyncio.get_running_loop().create_future()
    _sleepers.add(sleeper)
    try:
        async with asyncio.timeout(seconds):
            await sleeper
    except TimeoutError:
        return False
    finally:
        _sleepers.discard(sleeper)
    return True
