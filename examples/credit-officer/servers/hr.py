"""HR Table: the credit officer's definition allows none of its tools."""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("hr")


@server.tool()
def list_salaries(department: str) -> list[dict]:
    """Salaries of a department."""
    return [{"employee": "e-17", "salary": 91000}]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
