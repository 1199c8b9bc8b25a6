// The command line: one command at a time through POST …/command (the data plane's path),
// with the member's role's rights or an API key's; history with the up and down arrows.

import { getAll, redis, show } from './api.js';
import { h, field, uid } from './dom.js';

/** Splits a line as redis-cli does: spaces separate, "…" and '…' quote, \ escapes in "…". */
export function words(line) {
  const out = [];
  let cur = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === '"' || c === "'") {
      cur = cur ?? '';
      const q = c;
      for (i++; i < line.length && line[i] !== q; i++) {
        if (q === '"' && line[i] === '\\' && i + 1 < line.length) {
          i++;
          const e = line[i];
          cur += e === 'n' ? '\n' : e === 't' ? '\t' : e;
        } else cur += line[i];
      }
      if (i >= line.length) throw new Error('unbalanced quotes');
    } else if (/\s/.test(c)) {
      if (cur !== null) { out.push(cur); cur = null; }
    } else cur = (cur ?? '') + c;
  }
  if (cur !== null) out.push(cur);
  return out;
}

const scopes = { owner: 'admin', admin: 'admin', member: 'read-write', viewer: 'read-only' };

export async function cli(orgId, inst, me) {
  // Revoked keys stay in the list: running as one shows what its clients now get.
  const keys = await getAll(`/api/organizations/${orgId}/api-keys`);
  const history = [];
  let pos = 0;
  const log = h('div', { class: 'cli-log', role: 'log', 'aria-live': 'polite', 'aria-label': 'Command output', 'data-testid': 'cli-log', tabindex: '0' });
  const runAs = field({ label: 'Run as', name: 'run_as', type: 'select', options: [
    { value: '', label: `You (${me ? me.role : '?'}: ${scopes[me ? me.role : 'viewer']})` },
    ...keys.map((k) => ({ value: k.id, label: `API key “${k.name}” (${k.scope}${k.revoked_at ? ', revoked' : ''})` }))] });
  const inputId = uid('cli');
  const input = h('input', { id: inputId, name: 'command', class: 'mono', autocomplete: 'off', spellcheck: 'false', placeholder: 'SET greeting hello', 'aria-describedby': inputId + '-hint' });
  const line = (cls, t) => { log.append(h('div', { class: cls }, t)); log.scrollTop = log.scrollHeight; };
  const f = h('form', { 'aria-label': 'Run a command', novalidate: true },
    runAs,
    h('div', { class: 'field' }, h('label', { for: inputId }, 'Command'), input,
      h('span', { id: inputId + '-hint', class: 'muted' }, 'Enter runs it; ↑ and ↓ go through the history. Commands the data plane refuses are refused here with its text.')),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Run'), h('button', { type: 'button', class: 'secondary', onclick: () => log.replaceChildren() }, 'Clear')));
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (history[history.length - 1] !== text) history.push(text);
    pos = history.length;
    input.value = '';
    line('cmd', `> ${text}`);
    let argv;
    try { argv = words(text); } catch (e) { line('err', `(error) ${e.message}`); return; }
    try {
      const keyId = f.querySelector('select').value || null;
      const v = await redis(orgId, inst.id, keyId).one(...argv);
      line('out', show(v));
    } catch (e) {
      line('err', `(error) ${e.message}`);
    }
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowUp' && pos > 0) { pos--; input.value = history[pos]; ev.preventDefault(); }
    else if (ev.key === 'ArrowDown') { pos = Math.min(history.length, pos + 1); input.value = history[pos] ?? ''; ev.preventDefault(); }
  });
  setTimeout(() => input.focus(), 0);
  return h('div', {}, h('h2', {}, 'CLI'), f, log);
}
