"""The web dashboard: static files (static/) served at /ui by router.py.

The page is a client of ember's HTTP API only, like the CLI: nothing in static/ is generated from
server state, and nothing here imports the serving code (the router reads files, nothing else).
"""
