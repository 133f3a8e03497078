"""ASGI middleware that keeps slow or vanished clients from holding the service.

- A request body that stops arriving (fewer bytes than its Content-Length, then silence) is answered 408 after
  ``api.body_timeout_s`` without a new byte, instead of holding the connection and a handler open.
- A client that disconnects before its response is complete cancels its handler, so the generator stops
  working for it (the batcher abandons the job: its row stops at the next decode step).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class RequestGuard:
    """Wraps an ASGI app; ``body_timeout_s`` bounds the wait for each piece of a request body."""

    def __init__(self, app: ASGIApp, body_timeout_s: float):
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = _Exchange(receive, send, self.body_timeout_s)
        handler = asyncio.ensure_future(self.app(scope, state.receive, state.send))
        state.handler = handler
        try:
            await handler
        except asyncio.CancelledError:
            if not state.client_gone:
                raise  # the server itself is cancelling us (shutdown): not ours to swallow
            log.info("client disconnected from %s %s; its handler was cancelled", scope["method"], scope["path"])
        finally:
            state.stop_watching()


class _Exchange:
    """One request/response exchange: the guarded receive and send, and the disconnect watcher."""

    def __init__(self, receive: Receive, send: Send, body_timeout_s: float):
        self._receive = receive
        self._send = send
        self._timeout = body_timeout_s
        self.handler: asyncio.Future | None = None
        self.body_done = False
        self.response_done = False
        self.client_gone = False
        self._watcher: asyncio.Task | None = None

    async def receive(self) -> Message:
        if self.body_done:
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), self._timeout)
        except TimeoutError:
            raise HTTPException(
                408, f"the request body stopped arriving: nothing for {self._timeout:g} s (api.body_timeout_s); "
                "send the whole body its Content-Length announces",
            ) from None
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.body_done = True
            if message["type"] == "http.disconnect":
                self._client_left()
            else:
                self._watcher = asyncio.ensure_future(self._watch())
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_done = True
        await self._send(message)

    async def _watch(self) -> None:
        """Wait for the client to go (the server's receive returns http.disconnect once the body is read)."""
        message: Any = await self._receive()
        if message["type"] == "http.disconnect" and not self.response_done:
            self._client_left()

    def _client_left(self) -> None:
        self.client_gone = True
        if self.handler is not None and not self.handler.done():
            self.handler.cancel()

    def stop_watching(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
