// @upstash/redis against RedisGate's https:// URL: UPSTASH_URL and UPSTASH_TOKEN, with the test
// CA in NODE_EXTRA_CA_CERTS. Run by crates/redisgate-server/tests/it/tls.rs; exits non-zero on
// the first failure.
import { Redis } from "@upstash/redis";
import assert from "node:assert/strict";

const redis = new Redis({ url: process.env.UPSTASH_URL, token: process.env.UPSTASH_TOKEN });
assert.equal(await redis.set("node-https", { over: "tls" }), "OK");
assert.deepEqual(await redis.get("node-https"), { over: "tls" });
const p = redis.pipeline();
p.incr("node-https-n");
p.incr("node-https-n");
assert.deepEqual(await p.exec(), [1, 2]);
const tx = redis.multi();
tx.set("node-https-tx", "1");
tx.get("node-https-tx");
assert.deepEqual(await tx.exec(), ["OK", 1]);
console.log("ok @upstash/redis https");
