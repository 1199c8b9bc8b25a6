// Sign in, sign up, accept an invitation.

import { post } from './api.js';
import { h, field, form } from './dom.js';
import { go, refreshMe, session } from './app.js';

async function signInWith(email, password) {
  // `cookie: true`: the session becomes the HttpOnly rg_session cookie; the page only ever
  // holds its CSRF token.
  await post('/auth/login', { email, password, cookie: true });
  await refreshMe();
}

export async function signIn() {
  if (session.me) { go('#/orgs'); return h('p', {}, 'Signed in.'); }
  return h('section', {}, h('h1', {}, 'Sign in'),
    form({ label: 'Sign in', submit: 'Sign in', onsubmit: async (v) => {
      await signInWith(v.email, v.password);
      go('#/orgs');
    } },
    field({ label: 'E-mail', name: 'email', type: 'email', autocomplete: 'username', required: true }),
    field({ label: 'Password', name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
    h('p', {}, 'No account? ', h('a', { href: '#/signup' }, 'Sign up'), '.'));
}

export async function signUp() {
  return h('section', {}, h('h1', {}, 'Sign up'),
    h('p', { class: 'muted' }, 'The first account of a deployment administers it; after it, the deployment’s registration setting decides (by default you need an invitation token).'),
    form({ label: 'Sign up', submit: 'Create account', onsubmit: async (v) => {
      const body = { email: v.email, password: v.password };
      if (v.invitation) body.invitation = v.invitation.trim();
      await post('/auth/register', body);
      await signInWith(v.email, v.password);
      go('#/orgs');
    } },
    field({ label: 'E-mail', name: 'email', type: 'email', autocomplete: 'username', required: true }),
    field({ label: 'Password', name: 'password', type: 'password', autocomplete: 'new-password', hint: 'At least 12 characters.', required: true }),
    field({ label: 'Invitation token (optional)', name: 'invitation', autocomplete: 'off', hint: 'rgi_… — from the person who invited you.' })),
    h('p', {}, 'Have an account? ', h('a', { href: '#/signin' }, 'Sign in'), '.'));
}

export async function accept() {
  return h('section', {}, h('h1', {}, 'Accept an invitation'),
    form({ label: 'Accept an invitation', submit: 'Join', onsubmit: async (v) => {
      const member = await post('/api/invitations/accept', { token: v.token.trim() });
      await refreshMe();
      go(`#/orgs/${member.org_id}`);
    } }, field({ label: 'Invitation token', name: 'token', autocomplete: 'off', required: true, hint: 'rgi_… — it must be for your e-mail.' })));
}
