"""Scoring API stand-in: an MCP server cleared for personal data.

stdio by default; `--http PORT` serves streamable HTTP on 127.0.0.1:PORT/mcp instead.
"""

import sys

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

server = MCPServer("scoring")


class Score(BaseModel):
    customer_id: str
    score: int
    band: str


@server.tool()
def score(customer_id: str, income: int, debts: int) -> Score:
    """Credit score from income and debts."""
    ratio = debts / income if income > 0 else 1.0
    value = max(300, min(850, int(850 - ratio * 600)))
    band = "A" if value >= 700 else "B" if value >= 600 else "C"
    return Score(customer_id=customer_id, score=value, band=band)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
