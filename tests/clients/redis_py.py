"""redis-py against seqd with default settings: sync and asyncio, RESP2 and RESP3, the default
pipeline() (a MULTI/EXEC transaction), a connection pool shared by 8 threads.
Run by tests/redis_clients.rs as `python3 redis_py.py PORT`; exits non-zero on a failure."""

import asyncio
import sys
import threading

import redis
import redis.asyncio

PORT = int(sys.argv[1])


def check(client, key):
    first = client.execute_command("GETSEQ")
    assert client.execute_command("GETSEQ") == first + 1
    assert client.get(key) is None, "GET of an unused key is nil"
    assert client.incr(key) == 1
    assert client.incr(key) == 2
    assert client.incrby(key, 10) == 12
    assert client.get(key) == b"12"
    pipe = client.pipeline()  # transaction=True: MULTI ... EXEC
    pipe.execute_command("GETSEQ")
    pipe.incr(key)
    pipe.execute_command("GETSEQ")
    a, b, c = pipe.execute()
    assert (b, c) == (13, a + 1), (a, b, c)
    assert client.ping() is True
    assert client.echo("hi") == b"hi"
    assert client.info()["redis_version"]
    assert "sequences" in client.info("seqd")
    assert client.client_setname("app") is True
    assert client.client_getname() in ("app", b"app")
    assert isinstance(client.client_id(), int)
    assert client.dbsize() >= 2
    try:
        client.set(key, 1)
        raise AssertionError("SET accepted")
    except redis.ResponseError as e:
        assert "never goes back" in str(e), e


def pool_from_threads():
    pool = redis.ConnectionPool(host="127.0.0.1", port=PORT, max_connections=8)
    numbers, lock = [], threading.Lock()

    def work():
        client = redis.Redis(connection_pool=pool)
        mine = [client.execute_command("GETSEQ", "pooled") for _ in range(500)]
        assert mine == sorted(mine), "a client's numbers increase"
        with lock:
            numbers.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(numbers) == 4000 and len(set(numbers)) == 4000, "unique"
    assert sorted(numbers) == list(range(1, 4001)), "no gaps"


async def check_async():
    client = redis.asyncio.Redis(host="127.0.0.1", port=PORT)
    first = await client.execute_command("GETSEQ")
    assert await client.incr("async") == 1
    async with client.pipeline() as pipe:
        pipe.execute_command("GETSEQ")
        pipe.incr("async")
        a, b = await pipe.execute()
    assert (a, b) == (first + 1, 2), (first, a, b)
    await client.aclose()


check(redis.Redis(host="127.0.0.1", port=PORT), "default-protocol")
check(redis.Redis(host="127.0.0.1", port=PORT, protocol=2), "resp2")
check(redis.Redis(host="127.0.0.1", port=PORT, protocol=3), "resp3")
check(redis.Redis.from_url(f"redis://127.0.0.1:{PORT}/0?client_name=named"), "from-url")
pool_from_threads()
asyncio.run(check_async())
print("redis-py", redis.__version__, "ok")
