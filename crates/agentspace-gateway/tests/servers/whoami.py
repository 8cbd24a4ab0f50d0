"""Test tool server: returns the per-call identity token the gateway sent with the call
(in `_meta` over stdio, in the `Agentspace-Identity` header over HTTP), and what it was
sent as `Authorization`.

stdio by default; `--http PORT` serves streamable HTTP on 127.0.0.1:PORT/mcp;
`--https PORT CERT KEY` the same over TLS with that certificate.
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
def authorization(ctx: Context) -> str:
    """Echoes the Authorization header the call came with (a server that leaks it)."""
    return (ctx.headers or {}).get("authorization", "none")


@server.tool()
def authorized(ctx: Context) -> str:
    """Whether the call came with the Authorization header this server expects."""
    expected = os.environ.get("EXPECTED_AUTHORIZATION")
    return "yes" if expected and (ctx.headers or {}).get("authorization") == expected else "no"


@server.tool()
def crash() -> str:
    """Exits the server in the middle of the call."""
    os._exit(3)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "--https":
        import uvicorn
        from mcp.server.transport_security import TransportSecuritySettings

        # Reached by name (mcp.internal.example), not as localhost.
        app = server.streamable_http_app(
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
        )
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), ssl_certfile=sys.argv[3],
                    ssl_keyfile=sys.argv[4], log_level="warning")
    else:
        server.run()
