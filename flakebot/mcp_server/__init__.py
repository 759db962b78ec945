"""Flakebot as an MCP server (`flakebot mcp`): build tools, call them, clean them up.

catalog: the live deployed tools of a home; calls: one sandboxed call of a deployed tool;
server: the MCP handlers; serving: the stdio and HTTP transports.
"""
