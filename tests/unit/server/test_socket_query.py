"""The connect URL's query as the socket handler reads it (relay/server/app.py ``_socket_query``).

Why: the handler no longer uses ``request.query`` (yarl caches the parsed query on the URL for
the socket's whole life, ≈ 1 KiB per idle socket); what it reads must stay what
``request.query.get`` gave: percent-decoding, ``+`` as a space, the first of repeated names,
blank values kept.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from relay.server.app import _socket_query

QUERIES = [
    "apikey=eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.c2ln&vsn=2.0.0",
    "vsn=1.0.0&apikey=a%2Eb%2Ec",
    "apikey=a+b",
    "apikey=&vsn=",
    "apikey=1&apikey=2",
    "apikey",
    "a=1;apikey=2",
    "apikey=%E2%82%AC&x=%zz",
    "=x&vsn=2.0.0",
    "",
]


@pytest.mark.parametrize("query", QUERIES)
def test_socket_query_reads_what_request_query_reads(query: str) -> None:
    request = make_mocked_request("GET", f"/realtime/v1/websocket?{query}")
    expected = {k: request.query.get(k) for k in request.query}
    assert _socket_query(request) == expected
    for name in ("apikey", "vsn"):
        assert _socket_query(request).get(name) == request.query.get(name)
