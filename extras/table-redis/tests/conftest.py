"""Fixtures: a throwaway redis-server (or MAILRIDER_TEST_REDIS=host:port) and config files."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

sys.path.insert(0, os.path.dirname(__file__))

from redisserver import REDIS_SERVER, RedisServer, Target


@pytest.fixture(scope="session")
def target() -> Iterator[Target]:
    prefix = f"mrt-{uuid.uuid4().hex[:8]}-"
    env = os.environ.get("MAILRIDER_TEST_REDIS")
    server = None
    if env:
        host, _, port = env.rpartition(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=5)
        t = Target(host, int(port), client, prefix)
    else:
        if REDIS_SERVER is None:
            pytest.skip("redis-server not installed and MAILRIDER_TEST_REDIS not set")
        server = RedisServer().start()
        t = Target("127.0.0.1", server.port, server.client(), prefix)
    yield t
    for key in t.client.scan_iter(match=f"*{prefix}*", count=1000):
        t.client.delete(key)
    if server is not None:
        server.cleanup()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], str]:
    os.chmod(tmp_path, 0o755)
    counter = iter(range(1000))

    def write(text: str) -> str:
        path = tmp_path / f"redis-{next(counter)}.conf"
        path.write_text(text)
        os.chmod(path, 0o644)
        return str(path)

    return write
