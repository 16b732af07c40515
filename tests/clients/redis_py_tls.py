"""redis-py over seqd's --tls-port: ssl=True with the test CA, RESP2 and RESP3, a password, a
pipeline, asyncio, and a client certificate when the server requires one.
Run by tests/tls.rs as `python3 redis_py_tls.py PORT CA_FILE PASSWORD CERT KEY`; exits
non-zero on a failure."""

import asyncio
import ssl
import sys

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

PORT = int(sys.argv[1])
CA, PASSWORD, CERT, KEY = sys.argv[2:6]
TLS = dict(ssl=True, ssl_ca_certs=CA, ssl_certfile=CERT, ssl_keyfile=KEY)

for protocol in (2, 3):
    client = redis.Redis(host="localhost", port=PORT, password=PASSWORD, protocol=protocol, **TLS)
    first = client.execute_command("GETSEQ")
    assert client.execute_command("GETSEQ") == first + 1
    pipe = client.pipeline()
    for _ in range(100):
        pipe.execute_command("GETSEQ")
    numbers = pipe.execute()
    assert numbers == list(range(first + 2, first + 102)), numbers
    client.close()

try:
    redis.Redis(host="localhost", port=PORT, **TLS).execute_command("GETSEQ")
    raise AssertionError("served without a password")
except redis.AuthenticationError as e:
    assert "Authentication required" in str(e) or "HELLO must be called" in str(e), e

# Without its certificate the handshake (or the first reply) fails.
try:
    no_retries = Retry(NoBackoff(), 0)
    redis.Redis(host="localhost", port=PORT, password=PASSWORD, ssl=True, ssl_ca_certs=CA,
                retry=no_retries).execute_command("GETSEQ")
    raise AssertionError("served without a client certificate")
except (redis.ConnectionError, ssl.SSLError):
    pass


async def asyncio_client():
    client = redis.asyncio.Redis(host="localhost", port=PORT, password=PASSWORD, **TLS)
    assert await client.execute_command("GETSEQ") >= 1
    await client.aclose()


asyncio.run(asyncio_client())
print("ok")
