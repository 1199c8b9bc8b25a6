// Instances: the list with status and health, creating one (local or external), and an
// instance's page: its connect panel, configuration, data browser and command line.

import { get, getPage, post, del } from './api.js';
import { h, field, form, pagedTable, typedConfirm, copyButton, when } from './dom.js';
import { go, membership } from './app.js';
import { browser } from './browser.js';
import { cli } from './cli.js';

const mib = (b) => `${Math.round(b / 1048576)} MiB`;
const badge = (t) => h('span', { class: `badge ${t}` }, t);

export async function list(orgId) {
  const me = membership(orgId);
  const first = await getPage(`/api/organizations/${orgId}/redis-instances`);
  const row = (i) => h('tr', {},
    h('td', {}, h('a', { href: `#/orgs/${orgId}/instances/${i.id}` }, i.name)),
    h('td', {}, i.provisioner), h('td', {}, badge(i.status), i.status_reason ? h('span', { class: 'muted' }, ` ${i.status_reason}`) : null),
    h('td', {}, badge(i.health)), h('td', {}, i.provisioner === 'local' ? mib(i.memory_bytes) : '—'));
  const section = h('section', {}, h('h1', {}, `Instances · ${me ? me.name : ''}`),
    first.items.length ? pagedTable(['Name', 'Kind', 'Status', 'Health', 'Memory'], 'Instances', first, row, getPage) : h('p', {}, 'No instance yet.'));
  if (me && me.role !== 'viewer') section.append(h('h2', {}, 'Create an instance'), createForm(orgId));
  return section;
}

function createForm(orgId) {
  const progress = h('div', { 'aria-live': 'polite' });
  const urlField = field({ label: 'Redis URL', name: 'url', autocomplete: 'off', placeholder: 'redis://user:password@host:6379/0', hint: 'Stored sealed; never shown again. Only addresses the deployment allows.' });
  const memField = field({ label: 'Memory (MiB)', name: 'memory_mb', type: 'number', min: 1, value: 64 });
  urlField.hidden = true;
  const kind = field({ label: 'Kind', name: 'provisioner', type: 'select', options: [
    { value: 'local', label: 'Local: a redis-server RedisGate runs' }, { value: 'external', label: 'External: a server you bring' }] });
  kind.querySelector('select').addEventListener('change', (ev) => {
    const ext = ev.target.value === 'external';
    urlField.hidden = !ext;
    memField.hidden = ext;
  });
  return h('div', {}, form({ label: 'Create an instance', submit: 'Create instance', onsubmit: async (v) => {
    const body = { name: v.name, provisioner: v.provisioner };
    if (v.provisioner === 'external') body.url = v.url;
    else if (v.memory_mb) body.memory_mb = Number(v.memory_mb);
    progress.replaceChildren(h('p', {}, h('progress', { 'aria-label': 'Creating the instance' }), ' Starting the instance…'));
    try {
      const inst = await post(`/api/organizations/${orgId}/redis-instances`, body);
      go(`#/orgs/${orgId}/instances/${inst.id}`);
    } finally {
      progress.replaceChildren();
    }
  } }, h('div', { class: 'row' }, field({ label: 'Name', name: 'name', required: true, maxlength: 100 }), kind, memField), urlField), progress);
}

export async function page(orgId, id, tab = 'connect') {
  const me = membership(orgId);
  const inst = await get(`/api/organizations/${orgId}/redis-instances/${id}`);
  const base = `#/orgs/${orgId}/instances/${id}`;
  const tabs = h('nav', { class: 'tabs', 'aria-label': 'Instance' }, [['connect', 'Connect'], ['browser', 'Data browser'], ['cli', 'CLI']].map(([t, label]) =>
    h('a', { href: `${base}/${t}`, 'aria-current': t === tab ? 'page' : null }, label)));
  const body = tab === 'browser' ? await browser(orgId, inst, me) : tab === 'cli' ? await cli(orgId, inst, me) : await connect(orgId, inst, me);
  return h('section', {}, h('h1', {}, `${inst.name}`),
    h('p', {}, badge(inst.status), ' ', badge(inst.health), ' ', h('span', { class: 'muted' }, `${inst.provisioner}${inst.provisioner === 'local' ? ', ' + mib(inst.memory_bytes) : ''}, last seen healthy ${when(inst.last_seen_healthy)}`),
      inst.status_reason ? h('span', { class: 'error' }, ` ${inst.status_reason}`) : null),
    tabs, body);
}

function snippet(title, text) {
  return h('div', {}, h('h3', {}, title), h('pre', {}, text), copyButton(text, title));
}

/**
 * A standard (read-write) or read-only token for this instance only: an API key limited to it,
 * shown once, with its `.env` block. (Per-instance tokens of their own do not exist yet.)
 */
function tokenForm(orgId, inst, url) {
  const shown = h('div', { 'aria-live': 'polite' });
  return h('div', {}, form({ label: 'Create a token for this instance', submit: 'Create token', onsubmit: async (v) => {
    const created = await post(`/api/organizations/${orgId}/api-keys`, { name: v.name, scope: v.scope, instance_ids: [inst.id] });
    const env = `UPSTASH_REDIS_REST_URL=${url}\nUPSTASH_REDIS_REST_TOKEN=${created.key}`;
    shown.replaceChildren(h('div', { class: 'panel' },
      h('p', {}, h('strong', {}, `Token “${created.api_key.name}” (${created.api_key.scope}, this instance only). `), 'Copy it now: it is shown only this once.'),
      h('p', { class: 'secret mono' }, created.key), copyButton(created.key, 'token'),
      h('pre', {}, env), copyButton(env, '.env block')));
  } }, h('div', { class: 'row' },
    field({ label: 'Token name', name: 'name', required: true, value: `${inst.name} token`, maxlength: 100 }),
    field({ label: 'Kind', name: 'scope', type: 'select', options: [
      { value: 'read-write', label: 'Standard (read-write)' }, { value: 'read-only', label: 'Read-only' }] }))), shown);
}

async function connect(orgId, inst, me) {
  const url = `${location.origin}/redis/${inst.id}`;
  const token = '<an API key: rg_…>';
  const stats = inst.status === 'running' ? await get(`/api/organizations/${orgId}/redis-instances/${inst.id}/stats`).catch(() => null) : null;
  const out = h('div', {},
    h('h2', {}, 'Connect'),
    h('div', { class: 'panel' },
      h('p', {}, h('strong', {}, 'REST URL: '), h('code', { 'data-testid': 'rest-url' }, url), ' ', copyButton(url, 'REST URL')),
      h('p', {}, 'The token is an API key of this organization (', h('a', { href: `#/orgs/${orgId}/keys` }, 'API keys'),
        '): a read-write key is Upstash’s standard token, a read-only key its read-only token. A key is shown once, when it is created; per-instance tokens of their own do not exist yet, so the form below makes a key limited to this instance.')),
    me && me.role !== 'viewer' ? tokenForm(orgId, inst, url) : null,
    snippet('.env', `UPSTASH_REDIS_REST_URL=${url}\nUPSTASH_REDIS_REST_TOKEN=${token}`),
    snippet('curl', `curl ${url} -H "Authorization: Bearer $UPSTASH_REDIS_REST_TOKEN" -d '["SET","greeting","hello"]'\ncurl ${url}/get/greeting -H "Authorization: Bearer $UPSTASH_REDIS_REST_TOKEN"`),
    snippet('TypeScript (@upstash/redis)', `import { Redis } from "@upstash/redis";\nconst redis = Redis.fromEnv();\nawait redis.set("greeting", "hello");`),
    snippet('Python (upstash-redis)', `from upstash_redis import Redis\nredis = Redis.from_env()\nredis.set("greeting", "hello")`),
    h('h2', {}, 'Configuration'),
    h('dl', {},
      h('dt', {}, 'Id'), h('dd', { class: 'mono' }, inst.id),
      h('dt', {}, 'Kind'), h('dd', {}, inst.provisioner),
      h('dt', {}, 'Created'), h('dd', {}, when(inst.created_at)),
      stats ? [h('dt', {}, 'Memory used'), h('dd', {}, `${(stats.used_memory_bytes / 1048576).toFixed(1)} MiB`),
        h('dt', {}, 'Keys'), h('dd', {}, String(stats.keys)), h('dt', {}, 'Operations/s'), h('dd', {}, String(stats.ops_per_sec)),
        h('dt', {}, 'Clients'), h('dd', {}, String(stats.connected_clients))] : null));
  if (me && me.role !== 'viewer') {
    out.append(h('h2', {}, 'Delete'), typedConfirm({ what: 'instance', name: inst.name, onconfirm: async () => {
      await del(`/api/organizations/${orgId}/redis-instances/${inst.id}`);
      go(`#/orgs/${orgId}`);
    } }));
  }
  return out;
}
