// In-process allocation policies: CEL expressions an enrollment or group
// selects with the custom allocation webhook URL "policy:NAME". List,
// show, create, edit (sent with the etag read, so a change made meanwhile
// is refused) and delete, through /dpsd/allocationPolicies.
import { h, clear, table, errorBox, okBox, field, facts, fmtTime } from './dom.js';
import * as api from './api.js';
import { navigate } from './app.js';

const base = 'dpsd/allocationPolicies';

export async function policyListPage(main) {
  main.append(h('h1', {}, 'Allocation policies'),
    h('p', { class: 'muted' }, 'Custom allocation without a webhook: a CEL expression evaluated inside dpsd, seeing what a webhook would receive and answering what it would answer. An enrollment selects one with the webhook URL policy:NAME.'),
    h('div', { class: 'toolbar' }, h('a', { href: '#/policies/new', class: 'button', id: 'new-policy' }, 'New policy')));
  const msg = h('div', { 'aria-live': 'polite' });
  const list = h('div', { id: 'policies' });
  main.append(msg, list);
  const policies = (await api.get(base)).body || [];
  list.append(table([
    ['Name', p => h('a', { href: '#/policies/' + encodeURIComponent(p.name) }, p.name)],
    ['Webhook URL to use', p => h('code', {}, 'policy:' + p.name)],
    ['Description', p => p.description || '—'],
    ['Last updated', p => fmtTime(p.lastUpdatedDateTimeUtc)],
  ], policies, { label: 'Allocation policies', empty: 'No allocation policy yet.' }));
}

export async function policyDetailPage(main, name) {
  const p = (await api.get(base + '/' + api.enc(name))).body;
  const msg = h('div', { 'aria-live': 'polite', id: 'policy-message' });
  main.append(h('h1', {}, 'Policy ' + p.name),
    h('div', { class: 'toolbar' },
      h('a', { href: '#/policies/' + encodeURIComponent(p.name) + '/edit', class: 'button', id: 'edit-policy' }, 'Edit'),
      h('button', { type: 'button', class: 'danger', id: 'delete-policy', onclick: async () => {
        if (!confirm(`Delete policy ${p.name}? Enrollments that select it fail to allocate (400207) until it exists again.`)) return;
        try { await api.del(base + '/' + api.enc(p.name), { headers: p.etag ? { 'If-Match': p.etag } : {} }); navigate('#/policies'); } catch (e) { clear(msg).append(errorBox(e)); }
      } }, 'Delete')),
    msg,
    h('section', { class: 'panel' }, facts([
      ['Webhook URL', h('code', {}, 'policy:' + p.name)],
      ['Description', p.description || '—'],
      ['ETag', p.etag],
      ['Created', fmtTime(p.createdDateTimeUtc)],
      ['Last updated', fmtTime(p.lastUpdatedDateTimeUtc)],
    ])),
    h('h2', {}, 'Expression'), h('pre', { id: 'policy-expression' }, p.expression));
}

// policyEditPage creates a policy (name null) or edits one. dpsd compiles
// and type-checks the expression on save; its message, with line and
// column, is shown as is.
export async function policyEditPage(main, name) {
  let current = null;
  if (name) current = (await api.get(base + '/' + api.enc(name))).body;
  main.append(h('h1', {}, current ? 'Edit policy ' + current.name : 'New allocation policy'));
  const msg = h('div', { 'aria-live': 'polite', id: 'policy-message' });
  const nameIn = h('input', { type: 'text', id: 'ap-name', spellcheck: 'false', value: current ? current.name : '', disabled: !!current });
  const desc = h('input', { type: 'text', id: 'policy-description', value: current ? current.description || '' : '' });
  const expr = h('textarea', { id: 'policy-expr', rows: '16', spellcheck: 'false', class: 'code' });
  expr.value = current ? current.expression : '{"iotHubHostName": linkedHubs[0]}';
  main.append(msg, h('form', { class: 'stack', id: 'policy-form', onsubmit: async (ev) => {
    ev.preventDefault();
    clear(msg);
    const n = current ? current.name : nameIn.value.trim();
    try {
      const headers = current ? { 'If-Match': current.etag } : { 'If-None-Match': '*' };
      await api.put(base + '/' + api.enc(n), { expression: expr.value, description: desc.value.trim() || undefined }, { headers });
      navigate('#/policies/' + encodeURIComponent(n));
    } catch (e) { msg.append(errorBox(e)); }
  } },
  field('Name (letters, digits, hyphens)', nameIn),
  field('Description', desc),
  field('CEL expression: sees registrationId, payload, linkedHubs, currentIotHub, enrollment…; answers {"iotHubHostName": …, "initialTwin": …, "payload": …} or {"refuse": "reason"}', expr),
  h('div', { class: 'toolbar' }, h('button', { type: 'submit', id: 'save-policy' }, 'Save'),
    h('a', { href: current ? '#/policies/' + encodeURIComponent(current.name) : '#/policies' }, 'Cancel'))));
  if (current) msg.append(okBox('Saving replaces the version you read (etag ' + current.etag + '); a change saved meanwhile is refused.'));
}
