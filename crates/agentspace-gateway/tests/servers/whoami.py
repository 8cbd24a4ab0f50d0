"""Test tool server: returns the per-call identity token the gateway sent with the call
(in `_meta` over stdio, in the `Agentspace-Identity` header over HTTP).

stdio by default; `--http PORT` serves streamable HTTP on 127.0.0.1:PORT/mcp.
"""

import os
import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("whoami")


@server.tool()
def whoami(ctx: Context) -> str:
    """The identity token this call carried."""
    meta = ctx.request_context.meta or {}
    token = meta.get("agentspace/identity")
    if token is None and ctx.headers is not None:
        token = ctx.headers.get("agentspace-identity")
    return token or "none"


@server.tool()
def crash() -> str:
    """Exits the server in the middle of the call."""
    os._exit(3)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
