"""Letter templates: an MCP server cleared for personal data."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("templates")


@server.tool()
def render_letter(customer_name: str, decision: str) -> str:
    """Render the decision letter for a customer."""
    return f"Dear {customer_name},\n\nYour credit application was {decision}.\n\nKind regards,\nACME Lending"


if __name__ == "__main__":
    server.run()
