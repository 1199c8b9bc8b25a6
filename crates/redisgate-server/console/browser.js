// The data browser: keys paged with SCAN (cursor, MATCH, TYPE — never KEYS), each page's
// TYPE, TTL and MEMORY USAGE fetched in one pipeline, and a view per type with add, edit and
// delete. Everything runs through POST …/command with the caller's rights; values arrive
// base64-encoded and are shown as text only when they are UTF-8 (else as \xNN escapes).

import { redis, text, Bytes } from './api.js';
import { h, field, form, table, copyButton, busy, announce } from './dom.js';

const TYPES = ['string', 'hash', 'list', 'set', 'zset', 'stream'];
const PAGE = 50;
const UNITS = { seconds: 1, minutes: 60, hours: 3600, days: 86400 };

/** A plain prefix becomes `prefix*`; a glob is used as it is. */
export function pattern(p) {
  if (!p) return '*';
  return /[*?[]/.test(p) ? p : `${p}*`;
}

const ttlText = (t) => (t === -1 ? 'no TTL' : t === -2 ? 'gone' : `${t} s`);
const sizeText = (n) => (n === null || n === undefined ? '—' : n < 1024 ? `${n} B` : `${(n / 1024).toFixed(1)} KiB`);

export async function browser(orgId, inst, me) {
  const write = me && me.role !== 'viewer';
  const r = redis(orgId, inst.id);
  const listError = h('p', { class: 'error', role: 'alert' });
  const rowsBody = h('tbody');
  const detail = h('div', { class: 'detail', 'aria-live': 'polite' });
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Load more');
  let cursor = '0';
  let filter = { match: '*', type: '' };

  async function scanPage() {
    // SCAN looks at about COUNT keys per call and returns those that match MATCH/TYPE: start
    // with a page's worth, look at more per call while too few match (a rare prefix among
    // 100,000 keys), within a bound of calls; the cursor carries on where a page stopped.
    const found = [];
    let count = PAGE;
    for (let i = 0; i < 20 && found.length < PAGE; i++, count = Math.min(count * 4, 1000)) {
      const args = ['SCAN', cursor, 'MATCH', filter.match, 'COUNT', count];
      if (filter.type) args.push('TYPE', filter.type);
      const [next, keys] = await r.one(...args);
      cursor = text(next);
      found.push(...keys);
      if (cursor === '0') break;
    }
    return found;
  }

  async function load(reset) {
    listError.textContent = '';
    if (reset) { cursor = '0'; rowsBody.replaceChildren(); }
    try {
      const keys = await scanPage();
      const named = keys.filter((k) => k.utf8 !== null);
      const info = named.length ? await r.many(named.flatMap((k) => [['TYPE', k.utf8], ['TTL', k.utf8], ['MEMORY', 'USAGE', k.utf8]])) : [];
      keys.forEach((k) => {
        const i = named.indexOf(k);
        const [type, ttl, size] = i < 0 ? [null, null, null] : info.slice(i * 3, i * 3 + 3);
        const open = k.utf8 === null
          ? h('span', { class: 'mono', title: 'not UTF-8: shown escaped, read only' }, k.toString())
          : h('button', { type: 'button', class: 'secondary mono', 'data-key': k.utf8, onclick: () => openKey(k.utf8) }, k.utf8);
        rowsBody.append(h('tr', {}, h('td', {}, open), h('td', {}, type ? text(type) : '—'),
          h('td', {}, typeof ttl === 'number' ? ttlText(ttl) : '—'), h('td', {}, typeof size === 'number' ? sizeText(size) : '—')));
      });
      more.hidden = cursor === '0';
      announce(`${rowsBody.children.length} keys shown`);
    } catch (e) {
      listError.textContent = e.message;
    }
  }
  more.addEventListener('click', () => busy(more, () => load(false), 'Loading…'));

  const filterForm = form({ label: 'Filter keys', submit: 'Search', onsubmit: async (v) => {
    filter = { match: pattern(v.match.trim()), type: v.type };
    await load(true);
  } }, h('div', { class: 'row' },
    field({ label: 'Pattern', name: 'match', placeholder: 'user: (a prefix) or user:*:name', hint: 'A plain prefix means prefix*.', autocomplete: 'off' }),
    field({ label: 'Type', name: 'type', type: 'select', options: [{ value: '', label: 'any' }, ...TYPES] })));

  async function openKey(key) {
    detail.replaceChildren(h('p', {}, 'Loading…'));
    try {
      detail.replaceChildren(await keyView(r, key, write, () => load(true), () => openKey(key)));
      const hd = detail.querySelector('h3');
      if (hd) hd.focus();
    } catch (e) {
      detail.replaceChildren(h('p', { class: 'error', role: 'alert' }, e.message));
    }
  }

  const create = write ? createKey(r, (key) => { load(true); openKey(key); }) : null;
  const out = h('div', {}, h('h2', {}, 'Data browser'),
    write ? null : h('p', { class: 'muted' }, 'Viewers browse with a read-only scope, which the data plane does not let SCAN the keyspace; you can still read keys you know in the CLI.'),
    filterForm,
    // Key list, the open key beside it (below it on a phone), then the create form.
    h('div', { class: 'browser' },
      h('div', {}, listError, table(['Key', 'Type', 'TTL', 'Size'], [], 'Keys'), more),
      detail, create));
  out.querySelector('tbody').replaceWith(rowsBody);
  await load(true);
  return out;
}

function createKey(r, created) {
  return h('div', {}, h('h3', {}, 'Create a key'), form({ label: 'Create a key', submit: 'Create key', onsubmit: async (v, f) => {
    const k = v.key;
    if (!k) { const e = new Error('a key name is needed'); e.field = 'key'; throw e; }
    if ((await r.one('EXISTS', k)) === 1) { const e = new Error('this key exists'); e.field = 'key'; throw e; }
    const cmd = {
      string: ['SET', k, v.value],
      hash: ['HSET', k, v.field || 'field', v.value],
      list: ['RPUSH', k, v.value],
      set: ['SADD', k, v.value],
      zset: ['ZADD', k, v.field || '0', v.value],
      stream: ['XADD', k, '*', v.field || 'field', v.value],
    }[v.type];
    await r.one(...cmd);
    f.reset();
    created(k);
  } },
  field({ label: 'Key', name: 'key', autocomplete: 'off', required: true }),
  field({ label: 'Type', name: 'type', type: 'select', options: TYPES }),
  field({ label: 'Field / score (hash, zset, stream)', name: 'field', autocomplete: 'off' }),
  field({ label: 'Value / member', name: 'value', type: 'textarea' })));
}

/** Bytes as editable text, or null when they are not UTF-8 (read only then). */
const editable = (b) => (b instanceof Bytes ? b.utf8 : b === null ? '' : String(b));

async function keyView(r, key, write, listChanged, reopen) {
  const [type, ttl] = await r.many([['TYPE', key], ['TTL', key]]);
  const t = text(type);
  const err = h('p', { class: 'error', role: 'alert' });
  const act = (label, f, cls = 'secondary') => h('button', { type: 'button', class: cls, onclick: async (ev) => {
    err.textContent = '';
    try { await busy(ev.currentTarget, f); } catch (e) { err.textContent = e.message; }
  } }, label);
  const view = h('div', { class: 'panel' },
    h('h3', { tabindex: '-1' }, h('span', { class: 'mono' }, key)),
    h('p', {}, `Type ${t}, TTL `, h('span', { 'data-testid': 'ttl' }, ttlText(ttl)), ' ', copyButton(key, 'key')), err);
  if (t === 'none') { view.append(h('p', {}, 'This key does not exist (any more).')); return view; }
  if (write) {
    view.append(form({ label: 'Set the TTL', submit: 'Set TTL', onsubmit: async (v) => {
      const n = Number(v.amount) * UNITS[v.unit];
      if (!(n > 0)) { const e = new Error('a positive number is needed'); e.field = 'amount'; throw e; }
      await r.one('EXPIRE', key, Math.round(n));
      reopen(); listChanged();
    } }, h('div', { class: 'row' },
      field({ label: 'TTL', name: 'amount', type: 'number', min: 1 }),
      field({ label: 'Unit', name: 'unit', type: 'select', options: Object.keys(UNITS) }))),
    h('div', { class: 'actions' },
      act('Persist (remove TTL)', async () => { await r.one('PERSIST', key); reopen(); listChanged(); }),
      act('Delete key', async () => {
        if (!confirm(`Delete the key ${key}?`)) return;
        await r.one('DEL', key);
        view.replaceChildren(h('p', { role: 'status' }, `Deleted ${key}.`));
        listChanged();
      }, 'danger')));
  }
  view.append(await typeView(r, t, key, write, act, reopen));
  return view;
}

/** Entries per page of a list or sorted set. */
const SLICE = 200;

/**
 * A table filled page by page: `load(state)` answers `[rows, next state]`, the next state
 * `null` at the end; a "Load more" button asks for the next page.
 */
async function paged(tableWrap, first, load) {
  const body = tableWrap.querySelector('tbody');
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Load more');
  let state = first;
  const next = async () => {
    const [rows, after] = await load(state);
    body.append(...rows);
    state = after;
    more.hidden = after === null;
  };
  more.addEventListener('click', () => busy(more, next, 'Loading…'));
  await next();
  return h('div', {}, tableWrap, more);
}

function valueCell(v) {
  const s = v instanceof Bytes ? v.toString() : text(v);
  return h('td', {}, h('span', { class: 'mono' }, s), ' ', copyButton(s, 'value'));
}

async function typeView(r, t, key, write, act, reopen) {
  const rowsOf = (headers, rows) => table(headers, rows, `${t} entries`);
  if (t === 'string') {
    const v = await r.one('GET', key);
    const s = editable(v);
    let shown = v instanceof Bytes ? v.toString() : '';
    if (s !== null) { try { shown = JSON.stringify(JSON.parse(s), null, 2); } catch { shown = s; } }
    const out = h('div', {}, h('h4', {}, s === null ? 'Value (binary, \\xNN escaped; base64 below)' : 'Value'), h('pre', { 'data-testid': 'value' }, shown), copyButton(shown, 'value'));
    if (s === null) out.append(h('pre', {}, v.base64));
    if (write && s !== null) {
      out.append(form({ label: 'Edit the value', submit: 'Save value', onsubmit: async (f) => { await r.one('SET', key, f.value, 'KEEPTTL'); reopen(); } },
        field({ label: 'New value', name: 'value', type: 'textarea', value: s })));
    }
    return out;
  }
  const del = (label, f) => (write ? act(label, async () => { await f(); reopen(); }, 'danger') : null);
  if (t === 'hash') {
    const list = paged(rowsOf(['Field', 'Value', ''], []), '0', async (cursor) => {
      const [next, flat] = await r.one('HSCAN', key, cursor, 'COUNT', 200);
      const rows = [];
      for (let i = 0; i < flat.length; i += 2) {
        const f = editable(flat[i]);
        rows.push(h('tr', {}, h('td', { class: 'mono' }, text(flat[i])), valueCell(flat[i + 1]),
          h('td', {}, f !== null ? del('Delete', () => r.one('HDEL', key, f)) : null)));
      }
      return [rows, text(next) === '0' ? null : text(next)];
    });
    return h('div', {}, await list, write ? form({ label: 'Set a field', submit: 'Set field', onsubmit: async (v) => { await r.one('HSET', key, v.field, v.value); reopen(); } },
      h('div', { class: 'row' }, field({ label: 'Field', name: 'field', required: true }), field({ label: 'Value', name: 'value' }))) : null);
  }
  if (t === 'list') {
    const list = paged(rowsOf(['Index', 'Value', ''], []), 0, async (from) => {
      const items = await r.one('LRANGE', key, from, from + SLICE - 1);
      const rows = items.map((v, i) => h('tr', {}, h('td', {}, String(from + i)), valueCell(v),
        // LREM by value would take the first equal element, not this one: mark it, then remove the mark.
        h('td', {}, del('Delete', () => {
          const mark = `__redisgate_deleted_${crypto.randomUUID()}`;
          return r.many([['LSET', key, from + i, mark], ['LREM', key, 1, mark]]);
        }))));
      return [rows, items.length < SLICE ? null : from + SLICE];
    });
    return h('div', {}, await list, write ? h('div', {},
      form({ label: 'Append an element', submit: 'Append', onsubmit: async (v) => { await r.one('RPUSH', key, v.value); reopen(); } }, field({ label: 'Value', name: 'value' })),
      form({ label: 'Set an element', submit: 'Set element', onsubmit: async (v) => { await r.one('LSET', key, v.index, v.value); reopen(); } },
        h('div', { class: 'row' }, field({ label: 'Index', name: 'index', type: 'number' }), field({ label: 'Value', name: 'value' })))) : null);
  }
  if (t === 'set') {
    const list = paged(rowsOf(['Member', ''], []), '0', async (cursor) => {
      const [next, members] = await r.one('SSCAN', key, cursor, 'COUNT', 200);
      const rows = members.map((m) => h('tr', {}, valueCell(m),
        h('td', {}, editable(m) !== null ? del('Delete', () => r.one('SREM', key, editable(m))) : null)));
      return [rows, text(next) === '0' ? null : text(next)];
    });
    return h('div', {}, await list, write ? form({ label: 'Add a member', submit: 'Add member', onsubmit: async (v) => { await r.one('SADD', key, v.member); reopen(); } },
      field({ label: 'Member', name: 'member' })) : null);
  }
  if (t === 'zset') {
    const list = paged(rowsOf(['Member', 'Score', ''], []), 0, async (from) => {
      const flat = await r.one('ZRANGE', key, from, from + SLICE - 1, 'WITHSCORES');
      const rows = [];
      for (let i = 0; i < flat.length; i += 2) {
        const m = editable(flat[i]);
        rows.push(h('tr', {}, valueCell(flat[i]), h('td', {}, text(flat[i + 1])),
          h('td', {}, m !== null ? del('Delete', () => r.one('ZREM', key, m)) : null)));
      }
      return [rows, flat.length < 2 * SLICE ? null : from + SLICE];
    });
    return h('div', {}, await list, write ? form({ label: 'Add or rescore a member', submit: 'Save member', onsubmit: async (v) => { await r.one('ZADD', key, v.score, v.member); reopen(); } },
      h('div', { class: 'row' }, field({ label: 'Member', name: 'member' }), field({ label: 'Score', name: 'score', type: 'number', step: 'any', value: 0 }))) : null);
  }
  if (t === 'stream') {
    // Newest first, 100 at a time; the next page starts just below the last id shown.
    const list = paged(rowsOf(['Id', 'Fields', ''], []), '+', async (end) => {
      const entries = await r.one('XREVRANGE', key, end, '-', 'COUNT', 100);
      const rows = entries.map(([id, fields]) => {
        const pairs = [];
        for (let i = 0; i < fields.length; i += 2) pairs.push(`${text(fields[i])}=${text(fields[i + 1])}`);
        const eid = text(id);
        return h('tr', {}, h('td', { class: 'mono' }, eid), h('td', { class: 'mono' }, pairs.join('  ')),
          h('td', {}, del('Delete', () => r.one('XDEL', key, eid))));
      });
      return [rows, entries.length < 100 ? null : `(${text(entries[entries.length - 1][0])}`];
    });
    return h('div', {}, await list, write ? form({ label: 'Add an entry', submit: 'Add entry', onsubmit: async (v) => { await r.one('XADD', key, '*', v.field, v.value); reopen(); } },
      h('div', { class: 'row' }, field({ label: 'Field', name: 'field', required: true }), field({ label: 'Value', name: 'value' }))) : null);
  }
  return h('p', {}, `The console has no view for the type ${t}; use the CLI.`);
}
