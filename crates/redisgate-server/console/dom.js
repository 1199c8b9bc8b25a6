// Building pages without innerHTML: every piece of data goes in as a text node, so nothing a
// tenant stored (a key, a value, an e-mail) can become markup or script.

let ids = 0;
export const uid = (p = 'f') => `${p}${++ids}`;

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** A labelled control with its error line: `{name, label, type, options, hint, ...attrs}`. */
export function field({ label, name, type = 'text', options, hint, ...attrs }) {
  const id = uid(name || 'f');
  const errId = id + '-error';
  const hintId = hint ? id + '-hint' : undefined;
  const described = [hintId, errId].filter(Boolean).join(' ');
  let control;
  if (type === 'select') {
    // `selected` (not only `.value`), so a form's reset comes back to it.
    const { value, ...rest } = attrs;
    control = h('select', { id, name, 'aria-describedby': described, ...rest },
      options.map((o) => {
        const [v, text] = typeof o === 'string' ? [o, o] : [o.value, o.label];
        return h('option', { value: v, selected: value !== undefined && String(value) === String(v) }, text);
      }));
  } else if (type === 'textarea') {
    control = h('textarea', { id, name, 'aria-describedby': described, ...attrs });
  } else {
    control = h('input', { id, name, type, 'aria-describedby': described, ...attrs });
  }
  return h('div', { class: 'field' },
    h('label', { for: id }, label), control,
    hint ? h('span', { id: hintId, class: 'muted' }, hint) : null,
    h('p', { id: errId, class: 'error', 'data-error-for': name || '' }));
}

/** A form whose submit runs `onsubmit(values, form)`; its errors go next to their field. */
export function form({ label, submit, onsubmit, danger }, ...children) {
  const formError = h('p', { class: 'error', role: 'alert' });
  const button = h('button', { type: 'submit', class: danger ? 'danger' : null }, submit);
  const f = h('form', { 'aria-label': label, novalidate: true }, children, formError, h('div', { class: 'actions' }, button));
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(f);
    formError.textContent = '';
    const values = Object.fromEntries(new FormData(f).entries());
    await busy(button, async () => {
      try {
        await onsubmit(values, f);
      } catch (e) {
        showError(f, e, formError);
      }
    });
  });
  return f;
}

export function clearErrors(root) {
  for (const p of root.querySelectorAll('[data-error-for]')) p.textContent = '';
  for (const c of root.querySelectorAll('[aria-invalid]')) c.removeAttribute('aria-invalid');
}

/** Puts an ApiFail's message next to the field it names (`field`), else in `fallback`. */
export function showError(root, e, fallback) {
  const name = e && e.field;
  const slot = name ? root.querySelector(`[data-error-for="${CSS.escape(name)}"]`) : null;
  if (slot) {
    slot.textContent = e.message;
    const control = root.querySelector(`[name="${CSS.escape(name)}"]`);
    if (control) { control.setAttribute('aria-invalid', 'true'); control.focus(); }
  } else if (fallback) {
    fallback.textContent = e && e.message ? e.message : String(e);
  }
}

/** Runs `work` with `button` disabled and marked busy, showing progress for slow work. */
export async function busy(button, work, label = 'Working…') {
  const old = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  const timer = setTimeout(() => { button.textContent = label; announce(label); }, 300);
  try {
    return await work();
  } finally {
    clearTimeout(timer);
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.textContent = old;
  }
}

export function announce(msg) {
  const s = document.getElementById('status');
  if (s) s.textContent = msg;
}

export function copyButton(getText, what = 'value') {
  const b = h('button', { type: 'button', class: 'secondary', 'aria-label': `Copy ${what}` }, 'Copy');
  b.addEventListener('click', async () => {
    const t = typeof getText === 'function' ? getText() : getText;
    try {
      await navigator.clipboard.writeText(t);
      announce(`Copied ${what}`);
      b.textContent = 'Copied';
    } catch {
      // No clipboard permission: select the text for the user to copy.
      announce('Copy is not available; select the text and copy it');
      b.textContent = 'Copy failed';
    }
    setTimeout(() => { b.textContent = 'Copy'; }, 1500);
  });
  return b;
}

/** A delete button that asks for the name typed before it acts. */
export function typedConfirm({ what, name, onconfirm }) {
  const wrap = h('div', { class: 'panel' });
  const open = h('button', { type: 'button', class: 'danger' }, `Delete ${what}…`);
  wrap.append(open);
  open.addEventListener('click', () => {
    open.hidden = true;
    const f = form({ label: `Confirm deleting ${what}`, submit: `Delete ${what}`, danger: true, onsubmit: async (v) => {
      if (v.confirm !== name) {
        const e = new Error(`type “${name}” to confirm`);
        e.field = 'confirm';
        throw e;
      }
      await onconfirm();
    } }, field({ label: `Type “${name}” to delete this ${what}`, name: 'confirm', autocomplete: 'off' }));
    wrap.append(f);
    f.querySelector('input').focus();
  });
  return wrap;
}

export function table(headers, rows, caption) {
  return h('div', { class: 'table-wrap' }, h('table', {},
    caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows)));
}

/**
 * A table of a paged listing: the first page's rows, and while the listing has more, a
 * "Load more" button that appends the next page (`load(path)` answers `{items, next}`). Loading
 * page by page keeps an organization of thousands as quick to open as one of ten.
 */
export function pagedTable(headers, caption, first, row, load) {
  const wrap = table(headers, first.items.map(row), caption);
  const body = wrap.querySelector('tbody');
  const status = h('p', { class: 'error', role: 'alert' });
  const more = h('button', { type: 'button', class: 'secondary' }, `Load more ${caption.toLowerCase()}`);
  let next = first.next;
  more.hidden = !next;
  more.addEventListener('click', () => busy(more, async () => {
    try {
      const page = await load(next);
      body.append(...page.items.map(row));
      next = page.next;
      status.textContent = '';
    } catch (e) {
      status.textContent = e.message;
    }
    more.hidden = !next;
  }, 'Loading…'));
  return h('div', {}, wrap, status, h('div', { class: 'actions' }, more));
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');
