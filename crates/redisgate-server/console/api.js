// The one way pages talk to the server: the same JSON API curl uses, with the session
// cookie (sent by the browser, HttpOnly) and the session's CSRF token on every state change.

let csrf = null;

export function setCsrf(token) {
  csrf = token || null;
}

/** An API answer that was not 2xx: `error`, and `code`/`field` when the API gives them. */
export class ApiFail extends Error {
  constructor(status, body) {
    super(body && typeof body.error === 'string' ? body.error : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.field = body && body.field;
  }
}

/** Called when the session is gone (401 `unauthenticated`). */
let onSignedOut = () => {};
export function whenSignedOut(f) {
  onSignedOut = f;
}

export async function api(method, path, body) {
  return (await call(method, path, body)).data;
}

async function call(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && csrf) headers['x-csrf-token'] = csrf;
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { error: text }; }
  }
  if (!res.ok) {
    const fail = new ApiFail(res.status, data);
    if (res.status === 401 && fail.code === 'unauthenticated') onSignedOut();
    throw fail;
  }
  return { data, res };
}

/**
 * One page of a paged listing (instances, API keys): its items, and the path of the next page
 * from the `Link: <…>; rel="next"` header (null on the last page).
 */
export async function getPage(path) {
  const { data, res } = await call('GET', path);
  const link = /<([^>]*)>\s*;\s*rel="next"/.exec(res.headers.get('link') || '');
  return { items: data, next: link ? link[1] : null };
}

/** Every item of a paged listing, 1000 a page: for pickers and lookups that need them all. */
export async function getAll(path) {
  const items = [];
  for (let next = `${path}?limit=1000`; next;) {
    const page = await getPage(next);
    items.push(...page.items);
    next = page.next;
  }
  return items;
}

export const get = (p) => api('GET', p);
export const post = (p, b) => api('POST', p, b === undefined ? {} : b);
export const patch = (p, b) => api('PATCH', p, b);
export const put = (p, b) => api('PUT', p, b);
export const del = (p) => api('DELETE', p);

/**
 * Runs Redis commands on an instance through POST …/command: the data plane's own path, with
 * the caller's role (or `keyId`'s) rights. Answers come base64-encoded (binary-safe); `run`
 * returns the data plane's body, or throws ApiFail with the gateway's error text.
 */
export function redis(org, instance, keyId) {
  const path = `/api/organizations/${org}/redis-instances/${instance}/command`;
  const opts = (extra) => Object.assign({ encoding: 'base64' }, keyId ? { api_key_id: keyId } : {}, extra);
  return {
    one: async (...command) => decodeReply((await post(path, opts({ command: command.map(String) }))).result),
    many: async (commands) => {
      const answers = await post(path, opts({ pipeline: commands.map((c) => c.map(String)) }));
      return answers.map((a) => ('error' in a ? new ApiFail(400, a) : decodeReply(a.result)));
    },
  };
}

/** A reply's bytes, shown as text when they are UTF-8, else as redis-cli escapes. */
export class Bytes {
  constructor(bytes) { this.bytes = bytes; }
  get utf8() {
    try { return new TextDecoder('utf-8', { fatal: true }).decode(this.bytes); } catch { return null; }
  }
  toString() {
    const t = this.utf8;
    if (t !== null) return t;
    return Array.from(this.bytes, (b) => (b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : '\\x' + b.toString(16).padStart(2, '0'))).join('');
  }
  get base64() {
    // In chunks: spreading a large value into one call would overflow the stack.
    let bin = '';
    for (let i = 0; i < this.bytes.length; i += 0x8000) bin += String.fromCharCode(...this.bytes.subarray(i, i + 0x8000));
    return btoa(bin);
  }
}

function fromBase64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return new Bytes(out);
}

/** Base64 answers decoded: strings become Bytes (a top-level `OK` stays a string). */
export function decodeReply(v, top = true) {
  if (typeof v === 'string') return top && v === 'OK' ? 'OK' : fromBase64(v);
  if (Array.isArray(v)) return v.map((x) => decodeReply(x, false));
  return v;
}

/** A decoded reply as text, redis-cli style. */
export function show(v, indent = '') {
  if (v === null || v === undefined) return '(nil)';
  if (v instanceof Bytes) return JSON.stringify(v.toString());
  if (typeof v === 'number') return `(integer) ${v}`;
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    if (v.length === 0) return '(empty array)';
    const w = String(v.length).length;
    return v.map((x, i) => `${indent}${String(i + 1).padStart(w)}) ${show(x, indent + ' '.repeat(w + 2)).trimStart()}`).join('\n');
  }
  return JSON.stringify(v);
}

/** A value as plain text for displays (Bytes → text or escapes). */
export const text = (v) => (v instanceof Bytes ? v.toString() : v === null || v === undefined ? '' : String(v));
