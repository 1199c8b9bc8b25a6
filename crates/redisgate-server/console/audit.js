// The audit log: filters (action, outcome, actor, time) and pages going back in time.

import { get } from './api.js';
import { h, field, form, table, when } from './dom.js';

function view(title, path, people = []) {
  const results = h('div', { 'aria-live': 'polite' });
  let query = {};
  async function load(before) {
    const q = new URLSearchParams({ ...query, limit: '50', ...(before ? { before } : {}) });
    const page = await get(`${path}?${q}`);
    const rows = page.items.map((e) => h('tr', {}, h('td', {}, when(e.created_at)), h('td', {}, e.actor), h('td', { class: 'mono' }, e.action),
      h('td', { class: 'mono' }, e.target || ''), h('td', {}, e.outcome), h('td', {}, e.detail || ''), h('td', {}, e.ip || '')));
    const older = page.next ? h('button', { type: 'button', class: 'secondary', onclick: () => load(page.next) }, 'Older entries') : null;
    results.replaceChildren(rows.length ? table(['When', 'Who', 'Action', 'Target', 'Outcome', 'Detail', 'Address'], rows, 'Audit entries') : h('p', {}, 'No entry.'),
      before ? h('button', { type: 'button', class: 'secondary', onclick: () => load() }, 'Newest') : null, older);
  }
  const filters = form({ label: 'Filter the audit log', submit: 'Filter', onsubmit: async (v) => {
    query = {};
    if (v.action) query.action = v.action.trim();
    if (v.outcome) query.outcome = v.outcome;
    if (v.actor_user_id) query.actor_user_id = v.actor_user_id;
    if (v.since) query.since = new Date(v.since).toISOString();
    if (v.until) query.until = new Date(v.until).toISOString();
    await load();
  } }, h('div', { class: 'row' },
    field({ label: 'Action', name: 'action', placeholder: 'instance.create' }),
    field({ label: 'Outcome', name: 'outcome', type: 'select', options: [{ value: '', label: 'any' }, 'success', 'failure', 'denied'] }),
    people.length ? field({ label: 'Who', name: 'actor_user_id', type: 'select', options: [{ value: '', label: 'anyone' }, ...people.map((m) => ({ value: m.user_id, label: m.email }))] }) : null,
    field({ label: 'Since', name: 'since', type: 'datetime-local' }),
    field({ label: 'Until', name: 'until', type: 'datetime-local' })));
  return load().then(() => h('section', {}, h('h1', {}, title), filters, results));
}

export async function page(orgId) {
  const people = await get(`/api/organizations/${orgId}/members`);
  return view('Audit log', `/api/organizations/${orgId}/audit-logs`, people);
}
export const deployment = () => view('Deployment audit log', '/api/audit-logs');
