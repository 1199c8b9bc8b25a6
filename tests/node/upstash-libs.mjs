// @upstash/ratelimit and @upstash/lock, unchanged, against RedisGate instances reached with a
// read-write key: UPSTASH_URLS (comma-separated instance REST URLs) and UPSTASH_TOKEN.
// Run by crates/redisgate-server/tests/it/upstash_libs.rs; exits non-zero on the first failure.
import { Ratelimit, MultiRegionRatelimit } from "@upstash/ratelimit";
import { Lock } from "@upstash/lock";
import { Redis } from "@upstash/redis";
import assert from "node:assert/strict";

const urls = process.env.UPSTASH_URLS.split(",");
const token = process.env.UPSTASH_TOKEN;
const redis = (url) => new Redis({ url, token, enableAutoPipelining: false });
const [first, second] = urls.map(redis);

const algorithms = {
  fixedWindow: Ratelimit.fixedWindow(3, "60 s"),
  slidingWindow: Ratelimit.slidingWindow(3, "60 s"),
  tokenBucket: Ratelimit.tokenBucket(1, "60 s", 3),
  cachedFixedWindow: Ratelimit.cachedFixedWindow(3, "60 s"),
};

for (const [name, limiter] of Object.entries(algorithms)) {
  const rl = new Ratelimit({ redis: first, limiter, prefix: `rg-${name}`, analytics: false });
  const id = `user-${name}`;
  const seen = [];
  for (let i = 0; i < 4; i++) seen.push((await rl.limit(id)).success);
  assert.deepEqual(seen, [true, true, true, false], `${name}: three pass, the fourth is limited`);
  const { remaining } = await rl.getRemaining(id);
  assert.equal(remaining, 0, `${name}: getRemaining after the limit`);
  await rl.resetUsedTokens(id);
  assert.equal((await rl.limit(id)).success, true, `${name}: allowed again after resetUsedTokens`);
  console.log(`ok ratelimit ${name}`);
}

for (const [name, limiter] of Object.entries({
  fixedWindow: MultiRegionRatelimit.fixedWindow(3, "60 s"),
  slidingWindow: MultiRegionRatelimit.slidingWindow(3, "60 s"),
})) {
  const rl = new MultiRegionRatelimit({
    redis: [first, second],
    limiter,
    prefix: `rg-multi-${name}`,
    analytics: false,
  });
  const seen = [];
  for (let i = 0; i < 4; i++) {
    const r = await rl.limit("user-multi");
    await r.pending;
    seen.push(r.success);
  }
  assert.deepEqual(seen, [true, true, true, false], `multi-region ${name}: three pass, the fourth is limited`);
  const { remaining } = await rl.getRemaining("user-multi");
  assert.equal(remaining, 0, `multi-region ${name}: getRemaining`);
  await rl.resetUsedTokens("user-multi");
  // ratelimit 2.2.0's multi-region reset does not wait for its scripts (the promises are not
  // returned to Promise.all): wait until they have run in every region, as a caller of the
  // library must (getRemaining alone can say 3 while one region still holds the old count,
  // and the next limit() reads both).
  const cleared = async (r) => (await r.scan(0, { match: `rg-multi-${name}:user-multi*`, count: 1000 }))[1].length === 0;
  for (let i = 0; !((await cleared(first)) && (await cleared(second))) || (await rl.getRemaining("user-multi")).remaining !== 3; i++) {
    assert.ok(i < 100, `multi-region ${name}: the reset never reached the regions`);
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal((await rl.limit("user-multi")).success, true, `multi-region ${name}: allowed after reset`);
  console.log(`ok ratelimit multi-region ${name}`);
}

{
  const lock = new Lock({ id: "rg-lock", redis: first, lease: 10000 });
  assert.equal(await lock.acquire(), true, "lock acquired");
  const other = new Lock({ id: "rg-lock", redis: first, lease: 10000, retry: { attempts: 1, delay: 10 } });
  assert.equal(await other.acquire(), false, "a second holder waits");
  assert.equal(await lock.extend(5000), true, "lock extended");
  assert.equal(await lock.release(), true, "lock released");
  assert.equal(await other.acquire(), true, "free again after release");
  assert.equal(await other.release(), true);
  console.log("ok lock");
}
