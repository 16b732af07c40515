// node-redis against seqd with default settings: connect, GETSEQ, a pipeline of 10,000,
// multi().exec(), incr. Run by tests/redis_clients.rs as `node node_redis.mjs PORT`.
import assert from 'node:assert/strict';
import { createClient } from 'redis';

const port = Number(process.argv[2]);
const client = createClient({ url: `redis://127.0.0.1:${port}` });
client.on('error', (e) => { console.error('node-redis error:', e); process.exit(1); });
await client.connect();

const first = await client.sendCommand(['GETSEQ']);
assert.equal(await client.sendCommand(['GETSEQ']), first + 1);
assert.equal(await client.get('node-ids'), null);
assert.equal(await client.incr('node-ids'), 1);
assert.equal(await client.incrBy('node-ids', 4), 5);
assert.equal(await client.get('node-ids'), '5');

// Commands sent without waiting are pipelined (auto-pipelining).
const pipelined = await Promise.all(
  Array.from({ length: 10000 }, () => client.sendCommand(['GETSEQ', 'node-pipe'])));
assert.deepEqual(pipelined, Array.from({ length: 10000 }, (_, i) => i + 1));

const replies = await client.multi().incr('node-ids').sendCommand(['GETSEQ', 'node-pipe']).exec();
assert.deepEqual(replies, [6, 10001]);
assert.equal(await client.ping(), 'PONG');
await client.close();
console.log('node-redis ok');
