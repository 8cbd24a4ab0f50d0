"""Test agent: `python3 call.py URL TOOL JSON_ARGUMENTS...` calls each tool in turn
through the MCP endpoint with the official SDK and prints one JSON line per call."""

import asyncio
import json
import sys

from mcp import MCPError
from mcp.client import Client


async def main(url, calls):
    async with Client(url) as client:
        for tool, arguments in calls:
            try:
                r = await client.call_tool(tool, json.loads(arguments))
                text = " ".join(c.text for c in r.content if getattr(c, "type", "") == "text")
                print(json.dumps({"tool": tool, "ok": not r.is_error, "text": text}), flush=True)
            except MCPError as e:
                data = e.data if isinstance(e.data, dict) else {}
                print(json.dumps({"tool": tool, "ok": False, "error": e.code, "code": data.get("code")}), flush=True)


args = sys.argv[2:]
asyncio.run(main(sys.argv[1], list(zip(args[0::2], args[1::2]))))
