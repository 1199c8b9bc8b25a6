"""RedisGate driven by the official Upstash Python SDK (`upstash-redis`).

Run by crates/redisgate-server/tests/it/python_sdk.rs against a private
redis-server and RedisGate; can also be run by hand against any running
gateway:

    UPSTASH_REDIS_REST_URL=http://127.0.0.1:8080 \
    UPSTASH_REDIS_REST_TOKEN=... \
    .venv/bin/python -m pytest -q tests/python

Every test that talks to the gateway runs twice: with the SDK's default
base64 response encoding (header `Upstash-Encoding: base64`,
`rest_encoding="base64"`) and with it turned off (`rest_encoding=None`, plain
JSON strings). Keys carry a per-test uuid prefix so tests never interfere.
"""

import asyncio
import os
import uuid

import pytest

from upstash_redis import Redis
from upstash_redis.asyncio import Redis as AsyncRedis
from upstash_redis.errors import UpstashError


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def credentials():
    url = os.environ.get("UPSTASH_REDIS_REST_URL")
    token = os.environ.get("UPSTASH_REDIS_REST_TOKEN")
    if not url or not token:
        pytest.fail(
            "UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN must point at a "
            "running RedisGate (cargo test -p redisgate-server --test it python_sdk "
            "sets them)",
            pytrace=False,
        )
    return url, token


@pytest.fixture(params=["base64", None], ids=["base64", "plain"])
def encoding(request):
    """The SDK's `rest_encoding`: "base64" (its default) or None (off)."""
    return request.param


def make_client(cls, credentials, encoding):
    url, token = credentials
    # rest_retries=0: a bad answer (non-JSON body, dropped connection) must
    # fail the test at once instead of being papered over by the SDK's retry.
    return cls(url, token, rest_encoding=encoding, rest_retries=0)


@pytest.fixture
def redis(credentials, encoding):
    client = make_client(Redis, credentials, encoding)
    # Make sure the parametrisation really reaches the wire.
    if encoding == "base64":
        assert client._headers.get("Upstash-Encoding") == "base64"
    else:
        assert "Upstash-Encoding" not in client._headers
    yield client
    client.close()


@pytest.fixture
def key(request, credentials):
    """`key("name")` -> a key unique to this test; all are deleted afterwards.

    With REDISGATE_TEST_ONE_SLOT set (a Redis Cluster behind the gateway), a test's keys share
    one hash tag, so its multi-key commands stay within one slot as cluster applications do."""
    prefix = f"rg-py:{request.node.name}:{uuid.uuid4().hex}:"
    if os.environ.get("REDISGATE_TEST_ONE_SLOT"):
        prefix = "{" + prefix + "}"
    made = []

    def make(name):
        k = prefix + name
        made.append(k)
        return k

    yield make
    if made:
        with make_client(Redis, credentials, None) as c:
            c.delete(*made)


# --------------------------------------------------------------------------
# Connection / encoding edge cases
# --------------------------------------------------------------------------


def test_ping_and_echo(redis):
    # PONG is a status reply other than OK: it must be base64-encoded when
    # the encoding is on, plain otherwise.
    assert redis.ping() == "PONG"
    assert redis.ping("hello") == "hello"
    assert redis.echo("echo me") == "echo me"


def test_values_survive_encoding(redis, key):
    k = key("s")
    # Text that is itself valid base64 catches a gateway that forgets to
    # encode (the SDK would decode it to "abc") or encodes when it should not.
    for value in ["YWJj", "OK", "héllo wörld ✓ 日本", "", "a b\nc\t\"'\\", "1e21"]:
        assert redis.set(k, value) is True
        assert redis.get(k) == value
    assert redis.type(k) == "string"
    assert redis.strlen(k) == len("1e21")


# --------------------------------------------------------------------------
# Strings
# --------------------------------------------------------------------------


def test_strings(redis, key):
    k, c, m1, m2 = key("k"), key("counter"), key("m1"), key("m2")

    assert redis.get(k) is None
    assert redis.set(k, "value") is True
    assert redis.get(k) == "value"
    assert redis.set(k, "new", get=True) == "value"
    assert redis.get(k) == "new"

    assert redis.append(k, "-tail") == len("new-tail")
    assert redis.get(k) == "new-tail"

    assert redis.incr(c) == 1
    assert redis.incr(c) == 2
    assert redis.incrby(c, 40) == 42
    assert redis.decr(c) == 41
    assert redis.get(c) == "41"

    assert redis.mset({m1: "one", m2: 2}) is True
    assert redis.mget(m1, m2, key("missing")) == ["one", "2", None]

    assert redis.delete(k, c) == 2
    assert redis.exists(k, c, m1) == 1


def test_set_ex_nx(redis, key):
    k, nx = key("ttl"), key("nx")

    assert redis.set(k, "v", ex=100) is True
    ttl = redis.ttl(k)
    assert 0 < ttl <= 100

    assert redis.set(nx, "first", nx=True) is True
    # NX on an existing key: Redis answers a null bulk, the SDK maps it to False.
    assert redis.set(nx, "second", nx=True) is False
    assert redis.get(nx) == "first"
    assert redis.ttl(nx) == -1

    assert redis.set(nx, "third", xx=True, ex=50) is True
    assert redis.get(nx) == "third"
    assert 0 < redis.ttl(nx) <= 50


# --------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------


def test_hashes(redis, key):
    h = key("hash")

    assert redis.hset(h, "f1", "v1") == 1
    assert redis.hset(h, values={"f2": "v2", "f3": 3, "f1": "v1b"}) == 2
    assert redis.hget(h, "f1") == "v1b"
    assert redis.hget(h, "nope") is None
    assert redis.hgetall(h) == {"f1": "v1b", "f2": "v2", "f3": "3"}
    assert redis.hincrby(h, "f3", 10) == 13
    assert redis.hincrby(h, "counter", -5) == -5
    assert redis.hexists(h, "f2") is True
    assert redis.hdel(h, "f1", "f2", "nope") == 2
    assert redis.hgetall(h) == {"f3": "13", "counter": "-5"}
    assert redis.hlen(h) == 2
    assert redis.hgetall(key("missing")) == {}


# --------------------------------------------------------------------------
# Lists
# --------------------------------------------------------------------------


def test_lists(redis, key):
    lst = key("list")

    assert redis.rpush(lst, "a", "b", "c") == 3
    assert redis.lpush(lst, "z", "y") == 5
    assert redis.lrange(lst, 0, -1) == ["y", "z", "a", "b", "c"]
    assert redis.lrange(lst, 1, 2) == ["z", "a"]
    assert redis.lpop(lst) == "y"
    assert redis.lpop(lst, 2) == ["z", "a"]
    assert redis.llen(lst) == 2
    assert redis.lrange(key("missing"), 0, -1) == []
    assert redis.lpop(key("missing")) is None


# --------------------------------------------------------------------------
# Sets
# --------------------------------------------------------------------------


def test_sets(redis, key):
    s = key("set")

    assert redis.sadd(s, "a", "b", "c", "a") == 3
    assert sorted(redis.smembers(s)) == ["a", "b", "c"]
    assert redis.sismember(s, "a") is True
    assert redis.sismember(s, "zzz") is False
    assert redis.srem(s, "a", "zzz") == 1
    assert sorted(redis.smembers(s)) == ["b", "c"]
    assert redis.scard(s) == 2
    assert redis.smembers(key("missing")) == []


# --------------------------------------------------------------------------
# Sorted sets
# --------------------------------------------------------------------------


def test_sorted_sets(redis, key):
    z = key("zset")

    assert redis.zadd(z, {"a": 1, "b": 2.5, "c": 3}) == 3
    assert redis.zadd(z, {"a": 1}, nx=True) == 0
    assert redis.zrange(z, 0, -1) == ["a", "b", "c"]
    assert redis.zrange(z, 0, -1, withscores=True) == [
        ("a", 1.0),
        ("b", 2.5),
        ("c", 3.0),
    ]
    assert redis.zrange(z, 0, 1, rev=True, withscores=True) == [
        ("c", 3.0),
        ("b", 2.5),
    ]
    assert redis.zrange(z, 2, 3, sortby="BYSCORE") == ["b", "c"]
    assert redis.zscore(z, "b") == 2.5
    assert redis.zscore(z, "missing") is None
    assert redis.zincrby(z, 10, "a") == 11.0
    assert redis.zincrby(z, -0.5, "new") == -0.5
    assert redis.zrange(z, 0, -1, withscores=True) == [
        ("new", -0.5),
        ("b", 2.5),
        ("c", 3.0),
        ("a", 11.0),
    ]
    assert redis.zcard(z) == 4
    assert redis.zrem(z, "new", "missing") == 1


def test_zrangestore(redis, key):
    src, dst = key("src"), key("dst")
    redis.zadd(src, {"member1": 1, "member2": 2, "member3": 3, "member4": 4})

    assert redis.zrangestore(dst, src, 0, 2) == 3
    assert redis.zrange(dst, 0, -1, withscores=True) == [
        ("member1", 1.0),
        ("member2", 2.0),
        ("member3", 3.0),
    ]

    assert redis.zrangestore(dst, src, 0, 2, rev=True) == 3
    assert redis.zrange(dst, 0, -1, withscores=True) == [
        ("member2", 2.0),
        ("member3", 3.0),
        ("member4", 4.0),
    ]


def test_zrangestore_limit(redis, key):
    # Upstash's own test_zrangestore_limit: LIMIT on an index range, without
    # BYSCORE/BYLEX. Plain Redis rejects that ("ERR syntax error, LIMIT is only
    # supported in combination with either BYSCORE or BYLEX"); Upstash (and so
    # RedisGate, PROTOCOL.md section 10) accepts it. upstash-redis 1.8 calls the
    # arguments offset/count (older releases: limit_offset/limit_count); the
    # request is the same: ZRANGESTORE dst src 0 2 LIMIT 1 1.
    src, dst = key("src"), key("dst")
    redis.zadd(src, {"member1": 1, "member2": 2, "member3": 3, "member4": 4})

    assert redis.zrangestore(dst, src, 0, 2, offset=1, count=1) == 1
    assert redis.zrange(dst, 0, -1, withscores=True) == [("member2", 2.0)]


# --------------------------------------------------------------------------
# Pipelines and transactions
# --------------------------------------------------------------------------


def _batch(p, key):
    """Queues a mixed batch on `p` and returns the expected results."""
    s, c, h, lst, st, z = (
        key("s"),
        key("c"),
        key("h"),
        key("l"),
        key("st"),
        key("z"),
    )
    p.set(s, "value")
    p.get(s)
    p.append(s, "!")
    p.incr(c)
    p.incr(c)
    p.hset(h, values={"f": "v", "n": 1})
    p.hincrby(h, "n", 4)
    p.hgetall(h)
    p.rpush(lst, "a", "b")
    p.lpush(lst, "z")
    p.lrange(lst, 0, -1)
    p.sadd(st, "x")
    p.sismember(st, "x")
    p.zadd(z, {"m": 1.5, "n": 2})
    p.zincrby(z, 1, "m")
    p.zrange(z, 0, -1, withscores=True)
    p.zscore(z, "n")
    p.type(s)  # a status reply other than OK
    p.ping()
    p.get(key("missing"))
    p.mget(s, c)
    return [
        True,
        "value",
        6,
        1,
        2,
        2,
        5,
        {"f": "v", "n": "5"},
        2,
        3,
        ["z", "a", "b"],
        1,
        True,
        2,
        2.5,
        [("n", 2.0), ("m", 2.5)],
        2.0,
        "string",
        "PONG",
        None,
        ["value!", "2"],
    ]


def test_pipeline(redis, key):
    p = redis.pipeline()
    expected = _batch(p, key)
    assert p.exec() == expected
    # The pipeline is reset after exec and can be reused.
    p.get(key("s"))
    assert p.exec() == ["value!"]


def test_pipeline_chained(redis, key):
    k = key("k")
    p = redis.pipeline()
    p.set(k, "1").incr(k).incrby(k, 5).get(k)
    assert p.exec() == [True, 2, 7, "7"]


def test_multi_exec(redis, key):
    tx = redis.multi()
    expected = _batch(tx, key)
    assert tx.exec() == expected


def test_pipeline_error_item(redis, key):
    # One failing command does not stop the others; the SDK raises for the
    # error item.
    bad, after = key("bad"), key("after")
    p = redis.pipeline()
    p.set(bad, "not-a-number")
    p.incr(bad)
    p.set(after, "written")
    with pytest.raises(UpstashError, match="ERR value is not an integer or out of range"):
        p.exec()
    assert redis.get(after) == "written"


def test_multi_exec_runtime_error(redis, key):
    # A run-time error inside MULTI/EXEC does not abort the transaction.
    bad, after = key("bad"), key("after")
    tx = redis.multi()
    tx.set(bad, "not-a-number")
    tx.incr(bad)
    tx.set(after, "written")
    with pytest.raises(UpstashError, match="ERR value is not an integer or out of range"):
        tx.exec()
    assert redis.get(after) == "written"
    assert redis.get(bad) == "not-a-number"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_redis_errors_raise(redis, key):
    k = key("text")
    redis.set(k, "abc")
    with pytest.raises(UpstashError) as e:
        redis.incr(k)
    assert str(e.value) == "ERR value is not an integer or out of range"

    with pytest.raises(UpstashError) as e:
        redis.lpush(k, "x")
    assert str(e.value).startswith("WRONGTYPE ")

    with pytest.raises(UpstashError) as e:
        redis.execute(["NOSUCHCOMMAND", "x"])
    assert str(e.value).startswith("ERR unknown command")

    # The client is still usable afterwards.
    assert redis.get(k) == "abc"


# --------------------------------------------------------------------------
# Read-your-writes (upstash-sync-token)
# --------------------------------------------------------------------------


def test_read_your_writes_sync_token(redis, key):
    # The SDK stores the `upstash-sync-token` response header and sends it back
    # on every request. The gateway must hand out a fresh one after each write.
    assert redis._read_your_writes is True
    k = key("ryw")

    seen = []
    redis.set(k, "1")
    seen.append(redis._sync_token)
    assert seen[-1], "no upstash-sync-token header on a write response"

    redis.set(k, "2")
    seen.append(redis._sync_token)

    p = redis.pipeline()
    p.set(k, "3").incr(k)
    p.exec()
    seen.append(redis._sync_token)

    tx = redis.multi()
    tx.set(k, "5").incr(k)
    tx.exec()
    seen.append(redis._sync_token)

    redis.eval("return redis.call('SET', KEYS[1], ARGV[1])", [k], ["7"])
    seen.append(redis._sync_token)

    assert all(seen), seen
    assert len(set(seen)) == len(seen), f"sync token did not change after a write: {seen}"
    assert redis.get(k) == "7"

    # A garbage incoming token is accepted.
    redis._sync_token = "my-new-sync-token"
    assert redis.set(k, "8") is True
    assert redis._sync_token != "my-new-sync-token"
    assert redis.get(k) == "8"


# --------------------------------------------------------------------------
# asyncio client
# --------------------------------------------------------------------------


def test_async_client(credentials, encoding, key):
    k, c, h, z = key("k"), key("c"), key("h"), key("z")

    async def main():
        async with make_client(AsyncRedis, credentials, encoding) as r:
            assert await r.ping() == "PONG"
            assert await r.set(k, "YWJj", ex=60) is True
            assert await r.get(k) == "YWJj"
            assert await r.incr(c) == 1
            assert await r.hset(h, values={"a": "1"}) == 1
            assert await r.hgetall(h) == {"a": "1"}
            assert await r.zadd(z, {"m": 1, "n": 2}) == 2
            assert await r.zrange(z, 0, -1, withscores=True) == [
                ("m", 1.0),
                ("n", 2.0),
            ]

            # Concurrent requests on one client.
            got = await asyncio.gather(*(r.incr(c) for _ in range(10)))
            assert sorted(got) == list(range(2, 12))

            p = r.pipeline()
            p.get(k).incr(c).zscore(z, "n")
            assert await p.exec() == ["YWJj", 12, 2.0]

            tx = r.multi()
            tx.set(k, "tx").get(k).hincrby(h, "a", 2)
            assert await tx.exec() == [True, "tx", 3]

            with pytest.raises(UpstashError, match="ERR value is not an integer"):
                await r.incr(k)

    asyncio.run(main())
