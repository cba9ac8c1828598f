"""The baseline: an aiohttp app that reads the body and answers 200, nothing else."""

from __future__ import annotations

import sys

from aiohttp import web


async def callback(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "ok"})


def main() -> None:
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/callback", callback)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
