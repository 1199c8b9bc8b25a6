// API keys: create (scope, instances, expiry, rate) — the key is shown once, with a copy
// button — list (a page at a time), and revoke.

import { getAll, getPage, post, del } from './api.js';
import { h, field, form, pagedTable, copyButton, when } from './dom.js';
import { go, membership } from './app.js';

export async function page(orgId) {
  const me = membership(orgId);
  const manage = me && me.role !== 'viewer';
  // Keys a page at a time (an organization may have thousands); instances all, for their
  // names and the picker.
  const [first, instances] = await Promise.all([getPage(`/api/organizations/${orgId}/api-keys`), getAll(`/api/organizations/${orgId}/redis-instances`)]);
  const names = Object.fromEntries(instances.map((i) => [i.id, i.name]));
  const status = h('p', { class: 'error', role: 'alert' });
  const row = (k) => h('tr', {},
    h('td', {}, k.name), h('td', {}, k.scope),
    h('td', {}, k.instance_ids ? k.instance_ids.map((i) => names[i] || i).join(', ') : 'all'),
    h('td', {}, k.rate_limit ? `${k.rate_limit.per_second}/s, burst ${k.rate_limit.burst}` : 'plan'),
    h('td', {}, when(k.expires_at)), h('td', {}, when(k.last_used_at)),
    h('td', {}, k.revoked_at ? `revoked ${when(k.revoked_at)}` : 'active'),
    h('td', {}, manage && !k.revoked_at ? h('button', { type: 'button', class: 'danger', onclick: async () => {
      if (!confirm(`Revoke the key ${k.name}? Clients using it stop within a second.`)) return;
      try { await del(`/api/organizations/${orgId}/api-keys/${k.id}`); go(location.hash); } catch (e) { status.textContent = e.message; }
    } }, `Revoke ${k.name}`) : null));
  const section = h('section', {}, h('h1', {}, 'API keys'), status,
    first.items.length ? pagedTable(['Name', 'Scope', 'Instances', 'Rate', 'Expires', 'Last used', 'Status', 'Actions'], 'API keys', first, row, getPage) : h('p', {}, 'No API key yet.'));
  if (!manage) return section;
  const shown = h('div', { 'aria-live': 'polite' });
  const scopes = ['read-write', 'read-only'].concat(['owner', 'admin'].includes(me.role) ? ['admin'] : []);
  const picks = instances.map((i) => {
    const id = `inst-${i.id}`;
    return h('div', {}, h('input', { type: 'checkbox', id, name: `instance:${i.id}` }), ' ', h('label', { for: id }, i.name));
  });
  section.append(h('h2', {}, 'Create a key'), form({ label: 'Create an API key', submit: 'Create key', onsubmit: async (v, f) => {
    const body = { name: v.name, scope: v.scope };
    const ids = Object.keys(v).filter((k) => k.startsWith('instance:')).map((k) => k.slice(9));
    if (ids.length) body.instance_ids = ids;
    if (v.expires_at) body.expires_at = new Date(v.expires_at).toISOString();
    if (v.per_second || v.burst) body.rate_limit = { per_second: Number(v.per_second), burst: Number(v.burst || v.per_second) };
    const created = await post(`/api/organizations/${orgId}/api-keys`, body);
    f.reset();
    shown.replaceChildren(h('div', { class: 'panel' },
      h('p', {}, h('strong', {}, `Key “${created.api_key.name}” (${created.api_key.scope}). `), 'Copy it now: it is shown only this once.'),
      h('p', { class: 'secret mono', 'data-testid': 'new-key' }, created.key), copyButton(created.key, 'API key'),
      h('p', {}, h('a', { href: location.hash, onclick: (ev) => { ev.preventDefault(); go(location.hash); } }, 'Done, show the list'))));
    shown.querySelector('.secret').scrollIntoView();
  } },
  h('div', { class: 'row' }, field({ label: 'Name', name: 'name', required: true, maxlength: 100 }),
    field({ label: 'Scope', name: 'scope', type: 'select', options: scopes })),
  h('fieldset', {}, h('legend', {}, 'Instances (none ticked: all)'), picks, h('p', { class: 'error', 'data-error-for': 'instance_ids' })),
  h('div', { class: 'row' },
    field({ label: 'Expires (optional)', name: 'expires_at', type: 'datetime-local' }),
    field({ label: 'Rate: per second (optional)', name: 'per_second', type: 'number', min: 1 }),
    field({ label: 'Rate: burst', name: 'burst', type: 'number', min: 1 }))), shown);
  return section;
}
