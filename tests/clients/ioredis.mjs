// ioredis against seqd with default settings: connect (its ready check sends INFO), GETSEQ,
// a pipeline of 10,000, multi().exec(), incr. Run as `node ioredis.mjs PORT`.
import assert from 'node:assert/strict';
import Redis from 'ioredis';

const port = Number(process.argv[2]);
const client = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0 });
client.on('error', (e) => { console.error('ioredis error:', e); process.exit(1); });

const first = await client.call('GETSEQ');
assert.equal(await client.call('GETSEQ'), first + 1);
assert.equal(await client.incr('io-ids'), 1);
assert.equal(await client.incrby('io-ids', 4), 5);
assert.equal(await client.get('io-ids'), '5');

const pipeline = client.pipeline();
for (let i = 0; i < 10000; i++) pipeline.call('GETSEQ', 'io-pipe');
const results = await pipeline.exec();
assert.deepEqual(results.map(([error]) => error).filter(Boolean), []);
assert.deepEqual(results.map(([, n]) => n), Array.from({ length: 10000 }, (_, i) => i + 1));

const replies = await client.multi().incr('io-ids').call('GETSEQ', 'io-pipe').exec();
assert.deepEqual(replies, [[null, 6], [null, 10001]]);
client.disconnect();
console.log('ioredis ok');
