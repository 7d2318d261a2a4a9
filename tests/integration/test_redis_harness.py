"""The Redis harness the cluster tests rely on: a real server, restartable, with AOF persistence.

Why test the harness: the cluster tests' claims about Redis restarts ("data kept with AOF",
"a crash without persistence loses the log") are only as good as the server they restart.
"""

from __future__ import annotations

import redis

from tests.support.redis_server import RedisServer


def test_restart_keeps_streams_with_aof(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.xadd("relay:test", {"k": "v"})
    client.bgrewriteaof()
    redis_server.restart()
    client = redis.Redis.from_url(redis_server.url)
    assert client.xlen("relay:test") == 1
    assert client.config_get("appendonly")["appendonly"] == "yes"


def test_server_without_persistence_forgets_on_restart() -> None:
    server = RedisServer(appendonly=False)
    try:
        server.start()
        client = redis.Redis.from_url(server.url)
        client.xadd("relay:test", {"k": "v"})
        server.kill()
        server.start()
        assert redis.Redis.from_url(server.url).xlen("relay:test") == 0
    finally:
        server.cleanup()
