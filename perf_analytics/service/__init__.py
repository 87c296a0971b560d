"""The agents' endpoint: `POST/GET /api/agent/performance` over HTTP, API keys per org.

`keys` issues and checks API keys (only salted hashes are stored), `payload` turns a
request body into validated documents with the loader's checks, `commit` gathers
concurrent requests into one unordered insert (group commit), `app` is the Starlette
application that `perf-analytics serve` runs under uvicorn.
"""
