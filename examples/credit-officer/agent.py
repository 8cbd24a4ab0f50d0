"""The credit officer agent: walks the scenario of issue 6 through the MCP endpoint of
its cell with the official MCP Python SDK, and prints one JSON line per step.

Usage: python3 agent.py [URL]   (default http://127.0.0.1:3130/mcp, the cell's MCP door)
"""

import asyncio
import json
import sys
import warnings

from mcp import MCPError
from mcp.client import Client

# The SDK warns that resource subscriptions are gone from 2026 revisions; the agent
# tries one on purpose (the boundary refuses it).
warnings.simplefilter("ignore")
URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:3130/mcp"


def report(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


async def call(client, step, tool, arguments):
    """Calls a tool; reports the outcome and returns the result (None when refused)."""
    try:
        result = await client.call_tool(tool, arguments)
    except MCPError as e:
        data = e.data if isinstance(e.data, dict) else {}
        report(step, ok=False, error=e.code, code=data.get("code"), reason=data.get("reason"), message=e.message)
        return None
    meta = result.meta or {}
    report(
        step,
        ok=not result.is_error,
        structured=result.structured_content,
        text=" ".join(c.text for c in result.content if getattr(c, "type", "") == "text"),
        flags=meta.get("agentspace/flags", []),
    )
    return result


async def main():
    async with Client(URL) as client:
        tools = await client.list_tools()
        report("list", tools=sorted(t.name for t in tools.tools))

        # Mail to the outside world needs a human's approval.
        await call(client, "mail-external", "send_mail",
                   {"to": "eve@external.example", "subject": "hello", "body": "hi"})

        # The customer DB is allowed: the result is personal data.
        found = await call(client, "lookup", "lookup_customer", {"customer_id": "c-001"})
        customer = found.structured_content if found and found.structured_content else {}

        # HR and medical records do not exist for this agent; nor do tools not allowed.
        await call(client, "hr", "list_salaries", {"department": "lending"})
        await call(client, "medical", "get_record", {"patient_id": "p-1"})
        await call(client, "delete", "delete_customer", {"customer_id": "c-001"})

        # Mail is not cleared for pii: after the lookup, the session may not mail.
        await call(client, "mail-after-lookup", "send_mail",
                   {"to": "bob@acme.example", "subject": "Jane", "body": json.dumps(customer)})

        # Scoring is cleared for pii; the fourth identical call in a row is a loop.
        score = {"customer_id": customer.get("id", "c-001"), "income": customer.get("income", 0),
                 "debts": customer.get("debts", 0)}
        for n in range(1, 5):
            await call(client, f"score-{n}", "score", score)

        # Arguments are checked against the tool's schema.
        await call(client, "score-bad-arguments", "score", {"customer_id": "c-001", "income": "lots"})

        # A tampered record carries an instruction aimed at the model: flagged.
        await call(client, "lookup-tampered", "lookup_customer", {"customer_id": "c-002"})

        # Resources and prompts pass the same boundary: only what the definition allows
        # is listed, and anything else does not exist.
        resources = await client.list_resources()
        report("resources", uris=sorted(str(r.uri) for r in resources.resources))
        templates = await client.list_resource_templates()
        report("templates", templates=sorted(t.uri_template for t in templates.resource_templates))
        for step, uri in [("read-record", "customer://c-001"), ("read-tampered", "customer://c-002"),
                          ("read-hidden", "internal://audit-notes")]:
            try:
                read = await client.read_resource(uri)
                meta = read.meta or {}
                report(step, ok=True, text=" ".join(getattr(c, "text", "") for c in read.contents),
                       flags=meta.get("agentspace/flags", []))
            except MCPError as e:
                data = e.data if isinstance(e.data, dict) else {}
                report(step, ok=False, error=e.code, code=data.get("code"), message=e.message)
        try:
            await client.subscribe_resource("customer://c-001")
            report("subscribe", ok=True)
        except MCPError as e:
            report("subscribe", ok=False, error=e.code)
        prompts = await client.list_prompts()
        report("prompts", prompts=sorted(p.name for p in prompts.prompts))
        for step, name in [("brief", "credit_brief"), ("prompt-hidden", "collections_script")]:
            try:
                got = await client.get_prompt(name, {"customer_id": "c-001"})
                report(step, ok=True, text=" ".join(getattr(m.content, "text", "") for m in got.messages))
            except MCPError as e:
                report(step, ok=False, error=e.code, message=e.message)

        # The letter goes through templates, which is cleared for pii.
        await call(client, "letter", "render_letter",
                   {"customer_name": customer.get("name", "?"), "decision": "approved"})


asyncio.run(main())
