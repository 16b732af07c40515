// ioredis's password option against seqd --requirepass (its handshake HELLO 3 AUTH default
// password, then its ready check's INFO), with username default, and the refusals without or
// with a wrong password. Run by tests/redis_clients.rs as `node ioredis_auth.mjs PORT PASSWORD`.
import assert from 'node:assert/strict';
import Redis from 'ioredis';

const port = Number(process.argv[2]);
const password = process.argv[3];

for (const options of [{ password }, { username: 'default', password }]) {
  const client = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0, ...options });
  client.on('error', (e) => { console.error('ioredis error:', options, e); process.exit(1); });
  const first = await client.call('GETSEQ');
  assert.equal(await client.call('GETSEQ'), first + 1);
  assert.ok((await client.incr('io-auth')) >= 1);
  const pipeline = client.pipeline();
  for (let i = 0; i < 100; i++) pipeline.call('GETSEQ', 'io-auth-pipe');
  const results = await pipeline.exec();
  assert.deepEqual(results.map(([error]) => error).filter(Boolean), []);
  client.disconnect();
}

const refused = async (options, pattern) => {
  const client = new Redis({
    host: '127.0.0.1', port, maxRetriesPerRequest: 0, retryStrategy: () => null,
    enableReadyCheck: false, ...options,
  });
  client.on('error', () => {});
  await assert.rejects(client.call('GETSEQ'), pattern);
  client.disconnect();
};
// ioredis's handshake (HELLO 3) is refused as Redis refuses it.
await refused({}, /NOAUTH/);
await refused({ password: 'wrong' }, /WRONGPASS invalid username-password pair/);
console.log('ioredis auth ok');
