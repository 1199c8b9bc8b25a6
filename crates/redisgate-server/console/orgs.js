// Organizations, their members and invitations, settings (rename, quota, delete), and the
// deployment administrators' page (plans and their rate limits).

import { get, post, patch, put, del } from './api.js';
import { h, field, form, table, typedConfirm, copyButton, when, showError } from './dom.js';
import { go, refreshMe, session, membership } from './app.js';

const ROLES = ['owner', 'admin', 'member', 'viewer'];
const can = (role, ...roles) => roles.includes(role);

export async function list() {
  const orgs = await get('/api/organizations');
  const rows = orgs.map((o) => h('tr', {},
    h('td', {}, h('a', { href: `#/orgs/${o.id}` }, o.name)), h('td', {}, o.role), h('td', {}, o.plan), h('td', {}, when(o.created_at))));
  return h('section', {}, h('h1', {}, 'Organizations'),
    orgs.length ? table(['Name', 'Your role', 'Plan', 'Created'], rows, 'Your organizations') : h('p', {}, 'You belong to no organization yet.'),
    h('h2', {}, 'Create an organization'),
    form({ label: 'Create an organization', submit: 'Create', onsubmit: async (v) => {
      const org = await post('/api/organizations', { name: v.name });
      await refreshMe();
      go(`#/orgs/${org.id}`);
    } }, field({ label: 'Name', name: 'name', required: true, maxlength: 100 })),
    h('p', {}, h('a', { href: '#/accept' }, 'Accept an invitation'), ' to join an existing organization.'));
}

export async function members(orgId) {
  const me = membership(orgId);
  const manage = me && can(me.role, 'owner', 'admin');
  const people = await get(`/api/organizations/${orgId}/members`);
  const status = h('p', { class: 'error', role: 'alert' });
  const rows = people.map((m) => {
    const mine = m.user_id === session.me.user.id;
    let roleCell = m.role;
    if (manage) {
      const sel = field({ label: `Role of ${m.email}`, name: 'role', type: 'select', options: ROLES, value: m.role });
      sel.querySelector('label').className = 'visually-hidden';
      sel.querySelector('select').addEventListener('change', async (ev) => {
        try {
          await patch(`/api/organizations/${orgId}/members/${m.user_id}`, { role: ev.target.value });
          status.textContent = '';
          go(location.hash);
        } catch (e) {
          showError(sel, { ...e, message: e.message, field: 'role' });
          ev.target.value = m.role;
        }
      });
      roleCell = sel;
    }
    const remove = (manage || mine) ? h('button', { type: 'button', class: 'danger', onclick: async () => {
      if (!confirm(mine ? 'Leave this organization?' : `Remove ${m.email}?`)) return;
      try {
        await del(`/api/organizations/${orgId}/members/${m.user_id}`);
        if (mine) { await refreshMe(); go('#/orgs'); } else go(location.hash);
      } catch (e) { status.textContent = e.message; }
    } }, mine ? 'Leave' : 'Remove') : null;
    return h('tr', {}, h('td', {}, m.email), h('td', {}, roleCell), h('td', {}, when(m.joined_at)), h('td', {}, remove));
  });
  const section = h('section', {}, h('h1', {}, 'Members'), status,
    table(['E-mail', 'Role', 'Joined', 'Actions'], rows, 'Members'));
  if (!manage) {
    section.append(h('p', { class: 'muted' }, 'Only owners and administrators invite, change and remove members.'));
    return section;
  }
  const shown = h('div', { 'aria-live': 'polite' });
  section.append(h('h2', {}, 'Invite someone'),
    h('p', { class: 'muted' }, 'No mail is sent: pass the token on. They sign up with it, or accept it when signed in.'),
    form({ label: 'Invite a member', submit: 'Create invitation', onsubmit: async (v, f) => {
      const inv = await post(`/api/organizations/${orgId}/invitations`, { email: v.email, role: v.role });
      f.reset();
      shown.replaceChildren(h('div', { class: 'panel' },
        h('p', {}, `Invitation for ${inv.invitation.email} as ${inv.invitation.role}, valid until ${when(inv.invitation.expires_at)}. Shown once:`),
        h('p', { class: 'secret mono', 'data-testid': 'invitation-token' }, inv.token), copyButton(inv.token, 'invitation token')));
      await pending();
    } },
    h('div', { class: 'row' },
      field({ label: 'E-mail', name: 'email', type: 'email', required: true }),
      field({ label: 'Role', name: 'role', type: 'select', options: ROLES.filter((r) => me.role === 'owner' || r !== 'owner'), value: 'member' }))),
    shown);
  const invitations = h('div');
  section.append(h('h2', {}, 'Pending invitations'), invitations);
  async function pending() {
    const list = await get(`/api/organizations/${orgId}/invitations`);
    invitations.replaceChildren(list.length ? table(['E-mail', 'Role', 'Expires', 'Actions'], list.map((i) => h('tr', {},
      h('td', {}, i.email), h('td', {}, i.role), h('td', {}, when(i.expires_at)),
      h('td', {}, h('button', { type: 'button', class: 'danger', onclick: async () => {
        await del(`/api/organizations/${orgId}/invitations/${i.id}`);
        await pending();
      } }, 'Revoke')))), 'Pending invitations') : h('p', { class: 'muted' }, 'None.'));
  }
  await pending();
  return section;
}

export async function settings(orgId) {
  const org = await get(`/api/organizations/${orgId}`);
  const quota = await get(`/api/organizations/${orgId}/quota`);
  const section = h('section', {}, h('h1', {}, `Settings · ${org.name}`),
    h('h2', {}, 'Plan and quota'),
    h('dl', {},
      h('dt', {}, 'Plan'), h('dd', {}, org.plan),
      h('dt', {}, 'Instances'), h('dd', {}, String(quota.max_instances)),
      h('dt', {}, 'Memory'), h('dd', {}, `${Math.round(quota.max_memory_bytes / 1048576)} MiB`),
      h('dt', {}, 'API keys'), h('dd', {}, String(quota.max_api_keys))));
  if (session.me.user.is_admin) {
    section.append(form({ label: 'Change the quota', submit: 'Save quota', onsubmit: async (v) => {
      await put(`/api/organizations/${orgId}/quota`, {
        max_instances: Number(v.max_instances), max_memory_bytes: Number(v.max_memory_mb) * 1048576, max_api_keys: Number(v.max_api_keys),
      });
      go(location.hash);
    } }, h('div', { class: 'row' },
      field({ label: 'Max instances', name: 'max_instances', type: 'number', min: 0, value: quota.max_instances }),
      field({ label: 'Max memory (MiB)', name: 'max_memory_mb', type: 'number', min: 0, value: Math.round(quota.max_memory_bytes / 1048576) }),
      field({ label: 'Max API keys', name: 'max_api_keys', type: 'number', min: 0, value: quota.max_api_keys }))));
  }
  if (can(org.role, 'owner', 'admin')) {
    section.append(h('h2', {}, 'Rename'), form({ label: 'Rename the organization', submit: 'Rename', onsubmit: async (v) => {
      await patch(`/api/organizations/${orgId}`, { name: v.name });
      await refreshMe();
      go(location.hash);
    } }, field({ label: 'Name', name: 'name', value: org.name, required: true, maxlength: 100 })));
  }
  if (org.role === 'owner') {
    section.append(h('h2', {}, 'Delete'), h('p', {}, 'Deleting the organization deletes its instances (and their data) and API keys.'),
      typedConfirm({ what: 'organization', name: org.name, onconfirm: async () => {
        await del(`/api/organizations/${orgId}`);
        await refreshMe();
        go('#/orgs');
      } }));
  }
  return section;
}

export async function admin() {
  if (!session.me.user.is_admin) return h('section', {}, h('h1', {}, 'Administration'), h('p', {}, 'Only deployment administrators see this page.'));
  const plans = await get('/api/plans');
  const rows = plans.map((p) => {
    const f = form({ label: `Rate limit of the ${p.plan} plan`, submit: 'Save', onsubmit: async (v) => {
      await put(`/api/plans/${p.plan}/rate-limit`, { per_second: Number(v.per_second), burst: Number(v.burst) });
      go(location.hash);
    } }, h('div', { class: 'row' },
      field({ label: 'Per second', name: 'per_second', type: 'number', min: 1, value: p.rate_limit.per_second }),
      field({ label: 'Burst', name: 'burst', type: 'number', min: 1, value: p.rate_limit.burst })));
    const reset = p.rate_limit_source === 'api' ? h('button', { type: 'button', class: 'secondary', onclick: async () => {
      await del(`/api/plans/${p.plan}/rate-limit`);
      go(location.hash);
    } }, 'Back to the configured rate') : null;
    return h('tr', {}, h('th', { scope: 'row' }, p.plan),
      h('td', {}, `${p.default_quota.max_instances} instances, ${Math.round(p.default_quota.max_memory_bytes / 1048576)} MiB, ${p.default_quota.max_api_keys} keys`),
      h('td', {}, `${p.rate_limit.per_second}/s, burst ${p.rate_limit.burst} (${p.rate_limit_source})`), h('td', {}, f, reset));
  });
  return h('section', {}, h('h1', {}, 'Administration'),
    h('p', {}, 'Quotas of an organization are changed on its Settings page. ', h('a', { href: '#/admin/audit' }, 'Deployment audit log'), '.'),
    h('h2', {}, 'Plans'), table(['Plan', 'Default quota', 'Rate limit', 'Change'], rows, 'Plans'));
}
