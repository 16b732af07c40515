// node-redis's password option against seqd --requirepass: RESP2 (AUTH password), RESP3
// (HELLO 3 AUTH default password), username default, and the refusals without or with a
// wrong password. Run by tests/redis_clients.rs as `node node_redis_auth.mjs PORT PASSWORD`.
import assert from 'node:assert/strict';
import { createClient } from 'redis';

const port = Number(process.argv[2]);
const password = process.argv[3];
const url = `redis://127.0.0.1:${port}`;

for (const options of [{ password }, { password, RESP: 3 }, { username: 'default', password }]) {
  const client = createClient({ url, ...options });
  client.on('error', (e) => { console.error('node-redis error:', options, e); process.exit(1); });
  await client.connect();
  const first = await client.sendCommand(['GETSEQ']);
  assert.equal(await client.sendCommand(['GETSEQ']), first + 1);
  assert.ok((await client.incr('node-auth')) >= 1);
  const pipelined = await Promise.all(
    Array.from({ length: 100 }, () => client.sendCommand(['GETSEQ', 'node-auth-pipe'])));
  assert.equal(new Set(pipelined).size, 100);
  await client.close();
}

// Without a password: refused at its first command (node-redis's handshake, HELLO, gets
// NOAUTH as it does from Redis).
const anonymous = createClient({ url, socket: { reconnectStrategy: false } });
anonymous.on('error', () => {});
await assert.rejects(anonymous.connect(), /NOAUTH/);

// A wrong password: the connection is refused at AUTH.
const wrong = createClient({ url, password: 'wrong', socket: { reconnectStrategy: false } });
wrong.on('error', () => {});
await assert.rejects(wrong.connect(), /WRONGPASS invalid username-password pair/);
console.log('node-redis auth ok');
