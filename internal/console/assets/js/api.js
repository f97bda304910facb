// Calls to the console's API. The session cookie rides along by itself
// (HttpOnly: scripts never see it); every change carries the CSRF token.

let csrfToken = '';
let onSignedOut = () => {};

export function setCSRF(t) { csrfToken = t || ''; }
export function setSignedOutHandler(f) { onSignedOut = f; }

export class ApiError extends Error {
  constructor(status, body) {
    const msg = body && body.message ? body.message : `The request failed (HTTP ${status}).`;
    super(msg);
    this.status = status;
    this.code = body && body.errorCode;
    this.trackingId = body && body.trackingId;
  }
}

// call sends one request to /console/api/<path> and returns
// {body, headers, status}; errors throw ApiError.
export async function call(method, path, { body, headers = {}, signedOutOK = false } = {}) {
  const h = { 'Accept': 'application/json', ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') h['X-CSRF-Token'] = csrfToken;
  const res = await fetch('/console/api/' + path, {
    method, headers: h, credentials: 'same-origin', cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  const text = await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { message: text }; }
  }
  if (!res.ok) {
    if (res.status === 401 && !signedOutOK && path !== 'session') onSignedOut();
    throw new ApiError(res.status, data);
  }
  return { body: data, headers: res.headers, status: res.status };
}

export const get = (path, opts) => call('GET', path, opts);
export const post = (path, body, opts = {}) => call('POST', path, { ...opts, body });
export const put = (path, body, opts = {}) => call('PUT', path, { ...opts, body });
export const del = (path, opts) => call('DELETE', path, opts);

// query runs a service API query (POST .../query) for one page.
export async function query(path, { continuation = '', pageSize = 50 } = {}) {
  const headers = { 'x-ms-max-item-count': String(pageSize) };
  if (continuation) headers['x-ms-continuation'] = continuation;
  const r = await call('POST', path, { body: { query: '*' }, headers });
  return { items: r.body || [], continuation: r.headers.get('x-ms-continuation') || '' };
}

export const enc = encodeURIComponent;
