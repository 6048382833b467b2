"""A stdio MCP server for the tests: `python -m tests.agents.mcp_servers.stdio_server`."""

from tests.agents.mcp_servers.tools import build

if __name__ == "__main__":
    build("stdio-test").run("stdio")
