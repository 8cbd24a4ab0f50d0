"""Outbound mail: NOT cleared for personal data."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("mail")


@server.tool()
def send_mail(to: str, subject: str, body: str) -> str:
    """Send an e-mail."""
    return f"sent to {to}"


if __name__ == "__main__":
    server.run()
