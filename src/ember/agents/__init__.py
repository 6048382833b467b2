"""Agents on the server: tool loops, modes, tools (built-in and MCP), approvals (see types.py)."""
