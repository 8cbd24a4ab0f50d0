"""Test agent: `python3 relay_client.py URL TOOL JSON_ARGUMENTS...` calls each tool in
turn through the MCP endpoint with the official SDK, answering the server's requests
with its callbacks, and prints one JSON line per call (with what the callbacks saw)."""

import asyncio
import json
import sys
import warnings

from mcp import MCPError, types
from mcp.client import Client

warnings.simplefilter("ignore")
seen = []


async def sampling(context, params):
    text = params.messages[0].content.text
    seen.append({"sampling": text, "flags": (params.meta or {}).get("agentspace/flags") if hasattr(params, "meta") else None})
    # The model echoes a card number when asked for one: an answer that carries pii.
    answer = "4111 1111 1111 1111" if "card" in text else "band A"
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=answer), model="test-model")


async def elicitation(context, params):
    seen.append({"elicitation": params.message})
    return types.ElicitResult(action="accept", content={"approve": True})


async def roots(context):
    seen.append({"roots": True})
    return types.ListRootsResult(roots=[types.Root(uri="file:///workspace", name="workspace")])


async def logging(params):
    seen.append({"log": params.data})


notified = []


async def on_message(message):
    method = getattr(message, "method", None)
    if method is not None:
        notified.append(method)


async def main(url, calls):
    async with Client(url, sampling_callback=sampling, elicitation_callback=elicitation,
                      list_roots_callback=roots, logging_callback=logging,
                      message_handler=on_message) as client:
        for tool, arguments in calls:
            seen.clear()
            progress = []

            async def on_progress(p, total, message):
                progress.append(message)

            try:
                r = await client.call_tool(tool, json.loads(arguments), progress_callback=on_progress)
                text = " ".join(c.text for c in r.content if getattr(c, "type", "") == "text")
                if tool == "add_tool":
                    # The list change comes on the session's GET stream, in its own time.
                    for _ in range(100):
                        if notified:
                            break
                        await asyncio.sleep(0.05)
                print(json.dumps({"tool": tool, "ok": not r.is_error, "text": text, "seen": seen,
                                  "progress": progress, "notified": notified}), flush=True)
            except MCPError as e:
                data = e.data if isinstance(e.data, dict) else {}
                print(json.dumps({"tool": tool, "ok": False, "error": e.code, "code": data.get("code"),
                                  "seen": seen}), flush=True)


args = sys.argv[2:]
asyncio.run(main(sys.argv[1], list(zip(args[0::2], args[1::2]))))
