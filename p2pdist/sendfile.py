"""A FileResponse a handler can send itself (so it knows when the bytes are out)."""

from __future__ import annotations

from aiohttp import web


class SentFile(web.FileResponse):
    """aiohttp's FileResponse (sendfile, Range, HEAD), safe to prepare inside the handler.

    aiohttp prepares a returned response again; FileResponse would then try to send a second
    status line, fail, and drop the keep-alive connection. Preparing twice is a no-op here.
    """

    async def prepare(self, request: web.BaseRequest):
        if self.prepared:
            return None
        return await super().prepare(request)
