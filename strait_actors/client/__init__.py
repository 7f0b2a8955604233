"""The `strait` command-line client: the program's verbs that talk to a strait server over its REST
API (api.md), as an operator would with curl, but with credentials remembered and readable output.

`cli.py` routes a command line here when its first word is a client command; the server side
(`serve`, `migrate`) never imports this package. Layout: `http.py` (requests and the run stream),
`config.py` (where the URL and key come from), `output.py` (tables and JSON), `live.py` (following
a run), `commands.py` (the parser and its dispatch), `resources.py` (one group of verbs per API
resource) and `overview.py` (login, health, stats).
"""
