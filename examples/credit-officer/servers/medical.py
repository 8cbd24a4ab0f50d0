"""Medical Records: the credit officer's definition allows none of its tools."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("medical")


@server.tool()
def get_record(patient_id: str) -> dict:
    """A patient's medical record."""
    return {"patient": patient_id, "diagnosis": "confidential"}


if __name__ == "__main__":
    server.run()
