// The web console in a real browser: Debian's chromium driven by playwright-core, against a
// RedisGate started by crates/redisgate-server/tests/it/console.rs (its URL is argv[2]).
//
// The flow: sign up → organization → instance → API key → SET in the CLI (as that key) →
// the key in the data browser → its TTL edited → deleted → the API key revoked → the CLI
// refuses; then a member invited as viewer signs up with the invitation and is shown what
// they cannot do (writes refused in the CLI, no delete or create controls, 403 from the
// API). axe-core runs on every page (serious or critical violations fail), the console must
// not break its own CSP, and pages must fit 360 px. With SCREENSHOTS=<dir>, the main pages
// are saved there as PNG (docs/console/ in the repository).

import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const [base, externalUrl] = process.argv.slice(2);
if (!base || !externalUrl) throw new Error('usage: node console.mjs http://127.0.0.1:PORT redis://127.0.0.1:PORT');
const shots = process.env.SCREENSHOTS;
if (shots) mkdirSync(shots, { recursive: true });
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const PASSWORD = 'correct horse battery';
// The pages saved with SCREENSHOTS (the README links them).
const SHOWN = new Set(['signin', 'organizations', 'instances', 'instance-connect', 'keys-created', 'instance-cli', 'instance-browser',
  'instance-browser-360', 'members', 'audit', 'admin', 'viewer-cli']);
const started = Date.now();

const profile = mkdtempSync(join(tmpdir(), 'redisgate-console-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
});
context.setDefaultTimeout(15000);
const page = context.pages()[0] || (await context.newPage());
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => {
  if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console error: ${m.text()}`);
});
page.on('dialog', (d) => d.accept());
// Nothing but the gateway under test is ever asked for.
page.on('request', (r) => {
  if (!r.url().startsWith(base) && !r.url().startsWith('data:')) problems.push(`request off the server: ${r.url()}`);
});

const step = (name) => console.log(`step ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
const heading = (name) => page.getByRole('heading', { level: 1, name }).waitFor();
const button = (name, exact = true) => page.getByRole('button', { name, exact });
const label = (name) => page.getByLabel(name, { exact: true });

/** axe-core on the page as it is; serious and critical violations fail the run. */
const audited = new Set();
async function axe(name) {
  await page.evaluate(axeSource); // through the devtools protocol: the page's CSP stays strict
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of bad) {
    problems.push(`axe ${name}: ${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
  }
  // A missing value rendered as text is a bug the eye misses.
  const stray = await page.evaluate(() => document.body.innerText.match(/\b(null|undefined|NaN)\b|\[object Object\]/));
  if (stray) problems.push(`${name}: “${stray[0]}” shown on the page`);
  audited.add(name);
  if (shots && SHOWN.has(name)) await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

/** The page fits a 360 px wide screen (no sideways scrolling of the page itself). */
async function fits360(name) {
  await page.setViewportSize({ width: 360, height: 740 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  if (width > 362) problems.push(`${name} is ${width} px wide at 360 px`);
  await axe(`${name}-360`);
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function cli(command) {
  const input = label('Command');
  await input.fill(command);
  await input.press('Enter');
  const log = page.getByTestId('cli-log');
  await log.getByText(`> ${command}`, { exact: true }).last().waitFor();
}

async function lastOutput() {
  // The line after the last command echo.
  await page.waitForFunction(() => {
    const lines = [...document.querySelectorAll('[data-testid="cli-log"] > div')];
    return lines.length && !lines[lines.length - 1].textContent.startsWith('> ');
  });
  return page.evaluate(() => {
    const lines = [...document.querySelectorAll('[data-testid="cli-log"] > div')];
    return lines[lines.length - 1].textContent;
  });
}

function expect(cond, what) {
  if (!cond) throw new Error(`expected ${what}`);
}

try {
  // Sign up: the first account of the deployment.
  await page.goto(`${base}/console/`);
  await heading('Sign in');
  await axe('signin');
  await page.getByRole('link', { name: 'Sign up', exact: true }).first().click();
  await heading('Sign up');
  await axe('signup');
  await label('Password').fill('short');
  await label('E-mail').fill('owner@example.com');
  await button('Create account').click();
  // The API's error, next to its field.
  await page.locator('[data-error-for="password"]').getByText(/12/).waitFor();
  await label('Password').fill(PASSWORD);
  await button('Create account').click();
  await heading('Organizations');
  step('signed up');
  await axe('organizations');

  // Organization and instance.
  await label('Name').fill('Acme');
  await button('Create').click();
  await heading(/^Instances/);
  await axe('instances-empty');
  await label('Name').fill('cache');
  await label('Memory (MiB)').fill('16');
  await button('Create instance').click();
  await heading('cache');
  await page.getByTestId('rest-url').waitFor();
  const restUrl = await page.getByTestId('rest-url').textContent();
  expect(restUrl.startsWith(`${base}/redis/`), `a REST URL, got ${restUrl}`);
  step('instance created');
  await axe('instance-connect');
  const instanceHash = new URL(page.url()).hash.replace(/\/connect$/, '');
  const orgHash = instanceHash.replace(/\/instances\/.*/, '');
  // A read-only token for this instance, from the connect panel: it reads, it does not write.
  await label('Kind').selectOption('read-only');
  await button('Create token').click();
  const roToken = (await page.locator('.secret').textContent()).trim();
  await page.getByText(`UPSTASH_REDIS_REST_TOKEN=${roToken}`).waitFor();
  const [ro1, ro2] = await page.evaluate(async ([url, k]) => Promise.all(['["GET","x"]', '["SET","x","1"]'].map(async (b) =>
    (await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${k}` }, body: b })).json())), [restUrl, roToken]);
  expect(ro1.result === null && /^NOPERM/.test(ro2.error), `a read-only token, got ${JSON.stringify([ro1, ro2])}`);

  // An external instance: a server the tenant brings.
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: /^Instances/ }).click();
  await heading(/^Instances/);
  await label('Name').fill('own server');
  await label('Kind').selectOption('external');
  await label('Redis URL').fill(externalUrl);
  await button('Create instance').click();
  await heading('own server');
  await page.getByText('external', { exact: true }).first().waitFor();
  await page.locator('.badge.running').waitFor();
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: /^Instances/ }).click();
  await page.getByRole('link', { name: 'own server' }).waitFor();
  await axe('instances');
  step('external instance');

  // An API key, shown once.
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'API keys', exact: true }).click();
  await heading('API keys');
  await label('Name').fill('app');
  await label('Scope').selectOption('read-write');
  await button('Create key').click();
  const key = await page.getByTestId('new-key').textContent();
  expect(/^rg_[0-9a-f]{32}_/.test(key), `a key, got ${key}`);
  step('key created');
  await axe('keys-created');
  // It works on the data plane as curl would use it.
  const plane = await page.evaluate(async ([url, k]) => (await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${k}` }, body: '["PING"]' })).json(), [restUrl, key]);
  expect(plane.result === 'PONG', `PONG from the data plane, got ${JSON.stringify(plane)}`);
  await page.reload();
  await heading('API keys');
  expect((await page.getByTestId('new-key').count()) === 0, 'the key is not shown again');
  await fits360('keys');

  // SET in the CLI, as that key.
  await page.goto(`${base}/console/${instanceHash}/cli`);
  await label('Command').waitFor();
  await label('Run as').selectOption({ label: 'API key “app” (read-write)' });
  await cli('SET greeting "hello world"');
  expect((await lastOutput()) === 'OK', 'OK');
  await cli('GET greeting');
  expect((await lastOutput()) === '"hello world"', 'the value back');
  await cli('CONFIG GET maxmemory');
  const refused = await lastOutput();
  expect(/^\(error\) ERR unknown command|^\(error\) .*CONFIG|^\(error\) .*config/i.test(refused), `the gateway's refusal, got ${refused}`);
  // History: the up arrow brings the last command back.
  await label('Command').press('ArrowUp');
  expect((await label('Command').inputValue()) === 'CONFIG GET maxmemory', 'history');
  await label('Command').fill('');
  step('cli');
  await axe('instance-cli');

  // One key of every type, one hostile to HTML, one not UTF-8 (SETBIT 0 → the byte 0x80).
  for (const c of ['HSET user:1 name "<img src=x onerror=alert(1)>" age 42', 'RPUSH queue a b c', 'SADD tags red blue',
    'ZADD board 1 ann 2 bob', 'XADD events * kind signup', 'SETBIT bin 0 1', `SET doc '{"a":1,"b":[2,3]}'`]) {
    await cli(c);
    const out = await lastOutput();
    expect(!out.startsWith('(error)'), `${c} ran, got ${out}`);
  }

  // The data browser finds it; its TTL is set, then it is deleted.
  await page.getByRole('link', { name: 'Data browser', exact: true }).click();
  await page.getByRole('heading', { name: 'Data browser' }).waitFor();
  const keysShown = () => page.evaluate(() => [...document.querySelectorAll('button[data-key]')].map((b) => b.dataset.key).sort().join(' '));
  await page.locator('button[data-key="greeting"]').waitFor();
  expect(await keysShown() === 'bin board doc events greeting queue tags user:1', `every key, got ${await keysShown()}`);
  await label('Pattern').fill('user:');
  await button('Search').click();
  await page.waitForFunction(() => document.querySelectorAll('button[data-key]').length === 1);
  expect(await keysShown() === 'user:1', 'a prefix matches prefix*');
  await label('Pattern').fill('');
  const typeFilter = page.locator('form[aria-label="Filter keys"]').getByLabel('Type');
  await typeFilter.selectOption('zset');
  await button('Search').click();
  await page.waitForFunction(() => document.querySelector('button[data-key]')?.dataset.key === 'board' && document.querySelectorAll('button[data-key]').length === 1);
  await typeFilter.selectOption('');
  await button('Search').click();
  await page.locator('button[data-key="greeting"]').waitFor();
  const detail = page.locator('.detail');
  // Hash: the hostile value is text, never markup; fields are added and deleted.
  await page.locator('button[data-key="user:1"]').click();
  await detail.getByText('<img src=x onerror=alert(1)>', { exact: true }).waitFor();
  expect(await page.evaluate(() => document.querySelectorAll('main img').length) === 0, 'no element from a value');
  await detail.getByLabel('Field', { exact: true }).fill('email');
  await detail.getByLabel('Value', { exact: true }).fill('ann@example.com');
  await detail.getByRole('button', { name: 'Set field' }).click();
  await detail.getByText('ann@example.com', { exact: true }).waitFor();
  await detail.locator('tr', { hasText: 'age' }).getByRole('button', { name: 'Delete' }).click();
  await page.waitForFunction(() => ![...document.querySelectorAll('.detail td')].some((td) => td.textContent === 'age'));
  await axe('browser-hash');
  // List: delete the middle element.
  await page.locator('button[data-key="queue"]').click();
  await detail.locator('tr', { hasText: 'b' }).filter({ hasText: '1' }).getByRole('button', { name: 'Delete' }).click();
  await page.waitForFunction(() => [...document.querySelectorAll('.detail tbody tr')].map((r) => r.cells[1].textContent.replace(/ ?Copy$/, '')).join() === 'a,c');
  // Set, sorted set, stream.
  await page.locator('button[data-key="tags"]').click();
  await detail.getByLabel('Member', { exact: true }).fill('green');
  await detail.getByRole('button', { name: 'Add member' }).click();
  await detail.getByText('green', { exact: true }).waitFor();
  await page.locator('button[data-key="board"]').click();
  await detail.getByLabel('Member', { exact: true }).fill('carl');
  await detail.getByLabel('Score', { exact: true }).fill('3');
  await detail.getByRole('button', { name: 'Save member' }).click();
  await detail.locator('tr', { hasText: 'carl' }).getByText('3', { exact: true }).waitFor();
  await page.locator('button[data-key="events"]').click();
  await detail.getByText('kind=signup').waitFor();
  await axe('browser-stream');
  // Binary and JSON strings.
  await page.locator('button[data-key="bin"]').click();
  await page.getByTestId('value').getByText('\\x80', { exact: true }).waitFor();
  await page.locator('button[data-key="doc"]').click();
  await page.waitForFunction(() => document.querySelector('[data-testid="value"]')?.textContent === '{\n  "a": 1,\n  "b": [\n    2,\n    3\n  ]\n}');
  // A key made with the form.
  await label('Key').fill('made');
  await page.locator('form[aria-label="Create a key"]').getByLabel('Type').selectOption('hash');
  await label('Field / score (hash, zset, stream)').fill('f');
  await label('Value / member').fill('v');
  await button('Create key').click();
  await detail.locator('h3').getByText('made').waitFor();
  await detail.locator('tbody tr', { hasText: 'f' }).getByText('v', { exact: true }).waitFor();
  // Large collections come a page at a time.
  const many = Array.from({ length: 600 }, (_, i) => i);
  await page.getByRole('link', { name: 'CLI', exact: true }).click();
  await cli(`HSET bighash ${many.map((i) => `f${i} v${i}`).join(' ')}`);
  await cli(`RPUSH biglist ${many.join(' ')}`);
  await page.getByRole('link', { name: 'Data browser', exact: true }).click();
  for (const k of ['bighash', 'biglist']) {
    await page.locator(`button[data-key="${k}"]`).click();
    await detail.locator('h3').getByText(k, { exact: true }).waitFor();
    const rows = () => page.evaluate(() => document.querySelectorAll('.detail tbody tr').length);
    const first = await rows();
    expect(first < 600, `${k}: a first page, got ${first} rows`);
    const more = detail.getByRole('button', { name: 'Load more' });
    while (await more.isVisible()) {
      await more.click();
      await page.waitForFunction(() => !document.querySelector('.detail [aria-busy]'));
    }
    expect((await rows()) === 600, `${k}: every entry after Load more, got ${await rows()}`);
  }
  step('types');
  await page.locator('button[data-key="greeting"]').click();
  await page.getByTestId('ttl').getByText('no TTL').waitFor();
  await page.getByTestId('value').getByText('hello world').waitFor();
  await axe('instance-browser');
  await label('TTL').fill('5');
  await label('Unit').selectOption('minutes');
  await button('Set TTL').click();
  await page.getByTestId('ttl').getByText(/^(29\d|300) s$/).waitFor();
  step('ttl set');
  await fits360('instance-browser');
  await button('Delete key').click();
  await page.getByText('Deleted greeting.').waitFor();
  await button('Search').click();
  await page.waitForFunction(() => !document.querySelector('button[data-key="greeting"]'));
  step('key deleted');

  // Revoke the API key: the CLI, running as it, is refused.
  await page.goto(`${base}/console/${orgHash}/keys`);
  await heading('API keys');
  await button('Revoke app').click();
  await page.getByText(/^revoked /).waitFor();
  await page.goto(`${base}/console/${instanceHash}/cli`);
  await label('Run as').selectOption({ label: 'API key “app” (read-write, revoked)' });
  await cli('GET greeting');
  const gone = await lastOutput();
  expect(gone === '(error) WRONGPASS invalid or missing auth token', `the data plane's refusal, got ${gone}`);
  step('revoked key refused');

  // Invite a viewer.
  await page.goto(`${base}/console/${orgHash}/members`);
  await heading('Members');
  await label('E-mail').fill('viewer@example.com');
  await label('Role').selectOption('viewer');
  await button('Create invitation').click();
  const invitation = (await page.getByTestId('invitation-token').textContent()).trim();
  expect(invitation.startsWith('rgi_'), 'an invitation token');
  expect((await label('Role').inputValue()) === 'member', 'the invitation form back to its defaults');
  await axe('members');
  await page.goto(`${base}/console/${orgHash}/audit`);
  await heading('Audit log');
  await page.getByText('invitation.create').first().waitFor();
  await label('Action').fill('instance.create');
  await label('Who').selectOption({ label: 'owner@example.com' });
  await button('Filter').click();
  await page.waitForFunction(() => {
    const actions = [...document.querySelectorAll('main tbody tr td:nth-child(3)')].map((c) => c.textContent);
    return actions.length === 2 && actions.every((a) => a === 'instance.create');
  });
  await axe('audit');
  await page.goto(`${base}/console/${orgHash}/settings`);
  await heading(/^Settings/);
  await axe('settings');
  await page.goto(`${base}/console/#/admin`);
  await heading('Administration');
  await axe('admin');
  await button('Sign out').click();
  await heading('Sign in');
  step('invited');

  // The viewer signs up with the invitation and sees what they cannot do.
  await page.getByRole('link', { name: 'Sign up', exact: true }).first().click();
  await label('E-mail').fill('viewer@example.com');
  await label('Password').fill(PASSWORD);
  await label('Invitation token (optional)').fill(invitation);
  await button('Create account').click();
  await heading('Organizations');
  await page.getByRole('link', { name: 'Acme', exact: true }).click();
  await heading(/^Instances/);
  expect((await page.getByRole('heading', { name: 'Create an instance' }).count()) === 0, 'no create form for a viewer');
  await page.goto(`${base}/console/${instanceHash}/connect`);
  await heading('cache');
  expect((await page.getByRole('button', { name: /Delete instance/ }).count()) === 0, 'no delete button for a viewer');
  await page.goto(`${base}/console/${instanceHash}/cli`);
  await cli('SET greeting again');
  const denied = await lastOutput();
  expect(denied === "(error) NOPERM this token has no permissions to run the 'set' command", `a NOPERM, got ${denied}`);
  await cli('GET greeting');
  expect((await lastOutput()) === '(nil)', 'reads work');
  await axe('viewer-cli');
  await page.getByRole('link', { name: 'Data browser', exact: true }).click();
  await page.getByRole('alert').getByText(/NOPERM/).waitFor();
  expect((await page.getByRole('heading', { name: 'Create a key' }).count()) === 0, 'no key creation in the browser');
  await axe('viewer-browser');
  await page.goto(`${base}/console/${orgHash}/keys`);
  await heading('API keys');
  expect((await page.getByRole('button', { name: /^Revoke/ }).count()) === 0, 'no revoke for a viewer');
  expect((await page.getByRole('button', { name: 'Create key' }).count()) === 0, 'no key creation for a viewer');
  // And the API says no when asked directly (with the session's own CSRF token).
  const status = await page.evaluate(async (path) => {
    const me = await (await fetch('/auth/me')).json();
    const r = await fetch(path, { method: 'DELETE', headers: { 'x-csrf-token': me.csrf_token } });
    return [r.status, (await r.json()).code];
  }, `/api/organizations/${orgHash.split('/')[2]}/redis-instances/${instanceHash.split('/')[4]}`);
  expect(status[0] === 403 && status[1] === 'forbidden', `403 forbidden, got ${status}`);
  await axe('viewer-keys');
  step('viewer');

  // The owner again: a wrong password, then an invitation for an existing account, renaming,
  // and deleting with the name typed.
  await button('Sign out').click();
  await heading('Sign in');
  // By keyboard only: focus starts on the page's content, Tab reaches the fields, Enter sends.
  await page.waitForFunction(() => document.activeElement?.id === 'main');
  await page.keyboard.press('Tab');
  await page.keyboard.type('owner@example.com');
  await page.keyboard.press('Tab');
  await page.keyboard.type('not the password');
  await page.keyboard.press('Enter');
  await page.getByRole('alert').getByText('invalid e-mail or password').waitFor();
  expect((await label('E-mail').inputValue()) === 'owner@example.com', 'Tab went to the e-mail field first');
  await label('Password').fill(PASSWORD);
  await label('Password').press('Enter');
  await heading('Organizations');
  await label('Name').fill('Beta');
  await button('Create').click();
  await heading('Instances · Beta');
  const betaHash = new URL(page.url()).hash;
  await page.goto(`${base}/console/${betaHash}/members`);
  await heading('Members');
  await label('E-mail').fill('viewer@example.com');
  await label('Role').selectOption('member');
  await button('Create invitation').click();
  const second = (await page.getByTestId('invitation-token').textContent()).trim();
  await page.goto(`${base}/console/${orgHash}/settings`);
  await heading('Settings · Acme');
  await label('Name').fill('Acme Corp');
  await button('Rename').click();
  await heading('Settings · Acme Corp');
  await page.goto(`${base}/console/${instanceHash}/connect`);
  await heading('cache');
  await button('Delete instance…').click();
  await label('Type “cache” to delete this instance').fill('cach');
  await button('Delete instance').click();
  await page.locator('[data-error-for="confirm"]').getByText('type “cache” to confirm').waitFor();
  await label('Type “cache” to delete this instance').fill('cache');
  await button('Delete instance').click();
  await heading('Instances · Acme Corp');
  await page.getByRole('link', { name: 'own server' }).waitFor();
  expect((await page.getByRole('link', { name: 'cache', exact: true }).count()) === 0, 'the instance is gone');
  await page.goto(`${base}/console/${orgHash}/settings`);
  await button('Delete organization…').click();
  await label('Type “Acme Corp” to delete this organization').fill('Acme Corp');
  await button('Delete organization').click();
  await heading('Organizations');
  expect((await page.getByRole('link', { name: 'Acme Corp' }).count()) === 0, 'the organization is gone');
  step('renamed and deleted');

  // The viewer accepts the second invitation while signed in.
  await button('Sign out').click();
  await label('E-mail').fill('viewer@example.com');
  await label('Password').fill(PASSWORD);
  await button('Sign in').click();
  await heading('Organizations');
  await page.getByRole('link', { name: 'Accept an invitation' }).click();
  await heading('Accept an invitation');
  await axe('accept');
  await label('Invitation token').fill(second);
  await button('Join').click();
  await heading('Instances · Beta');
  step('invitation accepted');
} catch (e) {
  problems.push(`flow: ${e.stack || e}`);
  try { await page.screenshot({ path: join(tmpdir(), 'redisgate-console-failure.png'), fullPage: true }); } catch { /* closed */ }
  problems.push(`at ${page.url()}; screenshot in ${join(tmpdir(), 'redisgate-console-failure.png')}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

console.log(`pages checked with axe: ${[...audited].join(', ')}`);
if (problems.length) {
  for (const p of problems) console.error(p);
  process.exit(1);
}
console.log(`ok console flow (${((Date.now() - started) / 1000).toFixed(1)} s)`);
