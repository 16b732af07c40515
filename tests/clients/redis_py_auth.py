"""redis-py's password= option against seqd --requirepass: RESP2 (AUTH password), RESP3
(HELLO 3 AUTH default password), asyncio, and the refusals without or with a wrong password.
Run by tests/auth.rs as `python3 redis_py_auth.py PORT PASSWORD`; exits non-zero on a failure."""

import asyncio
import sys

import redis
import redis.asyncio

PORT = int(sys.argv[1])
PASSWORD = sys.argv[2]

for protocol in (2, 3):
    client = redis.Redis(port=PORT, password=PASSWORD, protocol=protocol)
    first = client.execute_command("GETSEQ")
    assert client.execute_command("GETSEQ") == first + 1
    assert client.incr("orders") >= 1
    pipe = client.pipeline()
    pipe.incr("orders")
    pipe.execute_command("GETSEQ")
    pipe.execute()
    client.close()

client = redis.Redis(port=PORT, username="default", password=PASSWORD)
assert client.ping() is True
client.close()

try:
    redis.Redis(port=PORT).execute_command("GETSEQ")
    raise AssertionError("served without a password")
except redis.AuthenticationError as e:
    assert "Authentication required" in str(e) or "HELLO must be called" in str(e), e

try:
    redis.Redis(port=PORT, password="wrong").execute_command("GETSEQ")
    raise AssertionError("served with a wrong password")
except redis.AuthenticationError as e:
    assert "invalid username-password pair" in str(e), e


async def asyncio_client():
    client = redis.asyncio.Redis(port=PORT, password=PASSWORD)
    assert await client.incr("async") >= 1
    await client.aclose()


asyncio.run(asyncio_client())
print("ok")
