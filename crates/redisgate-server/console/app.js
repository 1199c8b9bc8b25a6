// The console's shell: who is signed in, the navigation, and the `#/…` routes. Each page is
// a function of the route's parameters that returns an element; every datum it shows comes
// from the JSON API.

import { get, post, setCsrf, whenSignedOut } from './api.js';
import { h } from './dom.js';
import * as auth from './auth.js';
import * as orgs from './orgs.js';
import * as instances from './instances.js';
import * as keys from './keys.js';
import * as audit from './audit.js';

export const session = { me: null };

/** Reloads who is signed in (and their organizations and CSRF token). */
export async function refreshMe() {
  try {
    session.me = await get('/auth/me');
    if (session.me.csrf_token) setCsrf(session.me.csrf_token);
  } catch {
    session.me = null;
  }
  return session.me;
}

export function membership(orgId) {
  return session.me && session.me.organizations.find((o) => o.id === orgId);
}

export function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

const ORG = '([0-9a-f-]{36})';
const routes = [
  [/^#\/signin$/, auth.signIn, true],
  [/^#\/signup$/, auth.signUp, true],
  [/^#\/accept$/, auth.accept, false],
  [/^#\/orgs$/, orgs.list, false],
  [new RegExp(`^#/orgs/${ORG}$`), instances.list, false],
  [new RegExp(`^#/orgs/${ORG}/instances/${ORG}(?:/(connect|browser|cli))?$`), instances.page, false],
  [new RegExp(`^#/orgs/${ORG}/keys$`), keys.page, false],
  [new RegExp(`^#/orgs/${ORG}/members$`), orgs.members, false],
  [new RegExp(`^#/orgs/${ORG}/audit$`), audit.page, false],
  [new RegExp(`^#/orgs/${ORG}/settings$`), orgs.settings, false],
  [/^#\/admin$/, orgs.admin, false],
  [/^#\/admin\/audit$/, audit.deployment, false],
];

function nav(hash) {
  const n = document.getElementById('nav');
  n.replaceChildren();
  const me = session.me;
  if (!me) {
    n.append(h('a', { href: '#/signin' }, 'Sign in'), h('a', { href: '#/signup' }, 'Sign up'));
    return;
  }
  const link = (href, label) => h('a', { href, 'aria-current': hash === href ? 'page' : null }, label);
  n.append(link('#/orgs', 'Organizations'));
  const m = hash.match(/^#\/orgs\/([0-9a-f-]{36})/);
  const org = m && membership(m[1]);
  if (org) {
    const base = `#/orgs/${org.id}`;
    const links = [
      link(base, `Instances · ${org.name}`),
      link(`${base}/keys`, 'API keys'),
      link(`${base}/members`, 'Members'),
      ['owner', 'admin'].includes(org.role) ? link(`${base}/audit`, 'Audit log') : null,
      link(`${base}/settings`, 'Settings'),
    ];
    n.append(...links.filter(Boolean));
  }
  if (me.user.is_admin) n.append(link('#/admin', 'Administration'));
  const out = h('button', { type: 'button', class: 'secondary' }, 'Sign out');
  out.addEventListener('click', async () => {
    try { await post('/auth/logout'); } catch { /* already gone */ }
    session.me = null;
    setCsrf(null);
    go('#/signin');
  });
  n.append(h('span', { class: 'right' }, h('span', { class: 'muted' }, me.user.email), out));
}

let rendering = 0;
export async function render() {
  const mine = ++rendering;
  const hash = location.hash || '#/orgs';
  const main = document.getElementById('main');
  const route = routes.find(([re]) => re.test(hash));
  if (!route) {
    location.hash = '#/orgs';
    return;
  }
  const [re, page, anonymous] = route;
  if (!session.me && !anonymous) {
    await refreshMe();
    if (!session.me) {
      location.hash = '#/signin';
      return;
    }
  }
  nav(hash);
  let content;
  try {
    content = await page(...hash.match(re).slice(1));
  } catch (e) {
    content = h('div', {}, h('h1', {}, 'Something went wrong'), h('p', { class: 'error', role: 'alert' }, e.message || String(e)));
  }
  if (mine !== rendering) return;
  main.replaceChildren(content);
  const heading = main.querySelector('h1');
  document.title = `${heading ? heading.textContent + ' · ' : ''}RedisGate console`;
  main.focus();
}

whenSignedOut(() => {
  session.me = null;
  if (!/^#\/(signin|signup)$/.test(location.hash)) location.hash = '#/signin';
});
window.addEventListener('hashchange', render);
refreshMe().then(render);
