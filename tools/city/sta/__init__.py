"""A read-only OGC SensorThings API v1.1 over the city's PostgreSQL: `openpole city serve`.

parse (URL and query options), filter ($filter to an AST), mapping (the entities over the schema),
sql (an AST and a request to parameterised SQL), render (rows to JSON), server (aiohttp, limits).
docs/sensorthings.md describes the mapping and what the server claims.
"""
