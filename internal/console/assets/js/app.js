// The console's shell: the session, the header and navigation, and the
// hash router that draws one page at a time into <main>.
import { h, clear, errorBox, field } from './dom.js';
import * as api from './api.js';
import { overviewPage } from './overview.js';
import { enrollmentListPage, enrollmentEditPage, enrollmentDetailPage } from './enrollments.js';
import { registrationListPage, registrationDetailPage } from './registrations.js';
import { linkedHubsPage, builtinHubsPage, builtinHubPage } from './hubs.js';
import { certificatesPage } from './certificates.js';
import { policyListPage, policyDetailPage, policyEditPage } from './policies.js';

export const state = { session: null };

export function can(right) {
  return !!state.session && state.session.rights.some(r => r.toLowerCase() === right.toLowerCase());
}

const nav = [
  ['#/overview', 'Overview', null],
  ['#/groups', 'Enrollment groups', 'EnrollmentRead'],
  ['#/enrollments', 'Individual enrollments', 'EnrollmentRead'],
  ['#/registrations', 'Registrations', 'RegistrationStatusRead'],
  ['#/linkedhubs', 'Linked hubs', 'ServiceConfig'],
  ['#/policies', 'Allocation policies', 'ServiceConfig'],
  ['#/hubs', 'Built-in hubs', 'ServiceConfig'],
  ['#/certificates', 'Certificates', 'ServiceConfig'],
];

// routes map a hash pattern to a page; a page is async (main, params).
const routes = [
  [/^#\/overview$/, () => overviewPage],
  [/^#\/groups$/, () => (m) => enrollmentListPage(m, 'group')],
  [/^#\/groups\/new$/, () => (m) => enrollmentEditPage(m, 'group', null)],
  [/^#\/groups\/([^/]+)\/edit$/, (id) => (m) => enrollmentEditPage(m, 'group', id)],
  [/^#\/groups\/([^/]+)$/, (id) => (m) => enrollmentDetailPage(m, 'group', id)],
  [/^#\/enrollments$/, () => (m) => enrollmentListPage(m, 'individual')],
  [/^#\/enrollments\/new$/, () => (m) => enrollmentEditPage(m, 'individual', null)],
  [/^#\/enrollments\/([^/]+)\/edit$/, (id) => (m) => enrollmentEditPage(m, 'individual', id)],
  [/^#\/enrollments\/([^/]+)$/, (id) => (m) => enrollmentDetailPage(m, 'individual', id)],
  [/^#\/registrations(?:\?.*)?$/, () => registrationListPage],
  [/^#\/registrations\/([^/]+)$/, (id) => (m) => registrationDetailPage(m, id)],
  [/^#\/linkedhubs$/, () => linkedHubsPage],
  [/^#\/hubs$/, () => builtinHubsPage],
  [/^#\/hubs\/([^/]+)$/, (name) => (m) => builtinHubPage(m, name)],
  [/^#\/certificates$/, () => certificatesPage],
  [/^#\/policies$/, () => policyListPage],
  [/^#\/policies\/new$/, () => (m) => policyEditPage(m, null)],
  [/^#\/policies\/([^/]+)\/edit$/, (name) => (m) => policyEditPage(m, name)],
  [/^#\/policies\/([^/]+)$/, (name) => (m) => policyDetailPage(m, name)],
];

function drawHeader() {
  const top = clear(document.getElementById('top'));
  top.appendChild(h('span', { class: 'brand' }, 'dpsd'));
  if (!state.session) return;
  const here = location.hash || '#/overview';
  top.appendChild(h('nav', { 'aria-label': 'Main' },
    nav.filter(([, , right]) => !right || can(right)).map(([href, label]) =>
      h('a', { href, 'aria-current': here === href || here.startsWith(href + '/') || here.startsWith(href + '?') ? 'page' : null }, label))));
  top.appendChild(h('div', { class: 'who' },
    h('span', {}, 'Signed in as ', h('strong', { id: 'policy-name' }, state.session.policy)),
    h('button', { type: 'button', id: 'sign-out', onclick: signOut }, 'Sign out')));
}

async function signOut() {
  try { await api.del('session', { signedOutOK: true }); } catch { /* signed out either way */ }
  state.session = null;
  api.setCSRF('');
  navigate('#/signin');
}

function signInPage(main) {
  document.title = 'Sign in · dpsd console';
  const cs = h('input', { type: 'password', id: 'connection-string', name: 'connectionString', autocomplete: 'off', spellcheck: 'false' });
  const policy = h('input', { type: 'text', id: 'policy', name: 'policy', autocomplete: 'username', spellcheck: 'false' });
  const key = h('input', { type: 'password', id: 'key', name: 'key', autocomplete: 'current-password', spellcheck: 'false' });
  const msg = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'stack', id: 'signin-form', onsubmit: async (ev) => {
    ev.preventDefault();
    clear(msg);
    const body = cs.value.trim() ? { connectionString: cs.value.trim() } : { policy: policy.value.trim(), key: key.value.trim() };
    try {
      const r = await api.post('session', body, { signedOutOK: true });
      state.session = r.body;
      api.setCSRF(r.body.csrfToken);
      cs.value = ''; key.value = '';
      navigate('#/overview');
    } catch (e) {
      msg.appendChild(errorBox(e));
    }
  } },
    h('p', {}, 'Sign in with a service connection string (as ', h('code', {}, 'dpsd info'), ' prints it), or with a shared access policy name and key. The policy\'s rights decide what you may see and change.'),
    field('Service connection string', cs),
    h('p', { class: 'muted' }, 'or'),
    h('fieldset', {}, h('legend', {}, 'Policy and key'), field('Policy name', policy), field('Key', key)),
    h('div', {}, h('button', { type: 'submit', id: 'sign-in' }, 'Sign in')),
    msg);
  main.append(h('h1', {}, 'Sign in'), form);
  cs.focus();
}

let renderSeq = 0;

export async function render() {
  const seq = ++renderSeq;
  // Each render draws into a container of its own: a slower render that
  // a newer one replaced keeps drawing into a detached element.
  const main = h('div', { class: 'view' });
  clear(document.getElementById('main')).appendChild(main);
  drawHeader();
  if (!state.session) {
    signInPage(main);
    return;
  }
  let hash = location.hash;
  if (!hash || hash === '#/' || hash === '#/signin') {
    hash = '#/overview';
    history.replaceState(null, '', hash);
    drawHeader();
  }
  for (const [re, make] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    const page = make(...m.slice(1).map(decodeURIComponent));
    try {
      await page(main);
    } catch (e) {
      if (seq === renderSeq) main.appendChild(errorBox(e));
    }
    if (seq === renderSeq) {
      const h1 = main.querySelector('h1');
      if (h1) document.title = h1.textContent + ' · dpsd console';
    }
    return;
  }
  main.append(h('h1', {}, 'Not found'), h('p', {}, 'No console page has this address. ', h('a', { href: '#/overview' }, 'Go to the overview.')));
}

// navigate changes the page; links do it through the hash alone.
export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

async function start() {
  api.setSignedOutHandler(() => {
    state.session = null;
    api.setCSRF('');
    render();
  });
  try {
    const r = await api.get('session', { signedOutOK: true });
    if (r.body && r.body.signedIn) {
      state.session = r.body;
      api.setCSRF(r.body.csrfToken);
    }
  } catch {
    state.session = null;
  }
  window.addEventListener('hashchange', () => {
    render();
    document.getElementById('main').focus({ preventScroll: true });
  });
  render();
}

start();
