"""Tools an agent can call: the built-ins (shell, fs_*, http_fetch) and MCP servers' tools."""
