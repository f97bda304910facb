// Registrations: every enrollment's devices, filtered by group, hub and
// status, and each device's timeline from its record and allocation log.
import { h, clear, table, badge, errorBox, field, facts, fmtTime } from './dom.js';
import * as api from './api.js';
import { can, navigate } from './app.js';

const statuses = ['assigned', 'assigning', 'failed', 'disabled', 'unassigned'];

function hashParams() {
  const i = location.hash.indexOf('?');
  return new URLSearchParams(i < 0 ? '' : location.hash.slice(i + 1));
}

function groupOf(state) {
  return (state.symmetricKey && state.symmetricKey.enrollmentGroupId) || (state.x509 && state.x509.enrollmentGroupId) || '';
}

export async function registrationListPage(main) {
  main.append(h('h1', {}, 'Registrations'));
  const params = hashParams();
  let groups = [];
  if (can('EnrollmentRead')) {
    try { groups = (await api.query('enrollmentGroups/query', { pageSize: 1000 })).items.map(g => g.enrollmentGroupId); } catch { /* free text instead */ }
  }
  const group = h('select', { id: 'filter-group' }, h('option', { value: '' }, 'Any'),
    groups.map(g => h('option', { value: g, selected: params.get('group') === g }, g)));
  if (params.get('group') && !groups.includes(params.get('group'))) group.append(h('option', { value: params.get('group'), selected: true }, params.get('group')));
  const hub = h('input', { type: 'text', id: 'filter-hub', spellcheck: 'false', value: params.get('hub') || '' });
  const status = h('select', { id: 'filter-status' }, h('option', { value: '' }, 'Any'),
    statuses.map(s => h('option', { value: s, selected: params.get('status') === s }, s)));
  const results = h('div', { id: 'results', 'aria-live': 'polite' });
  main.append(h('form', { class: 'toolbar', role: 'search', onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    if (group.value) p.set('group', group.value);
    if (hub.value.trim()) p.set('hub', hub.value.trim());
    if (status.value) p.set('status', status.value);
    navigate('#/registrations' + (p.toString() ? '?' + p : ''));
  } }, field('Enrollment group', group), field('Hub', hub), field('Status', status), h('button', { type: 'submit', class: 'secondary', id: 'apply-filter' }, 'Filter')), results);

  const pages = [''];
  let at = 0;
  async function load() {
    clear(results).append(h('p', { class: 'muted' }, 'Loading…'));
    const q = new URLSearchParams({ limit: '50' });
    for (const k of ['group', 'hub', 'status']) if (params.get(k)) q.set(k, params.get(k));
    if (pages[at]) q.set('after', pages[at]);
    let page;
    try {
      page = (await api.get('dpsd/registrations?' + q)).body;
    } catch (e) {
      clear(results).append(errorBox(e));
      return;
    }
    const groupsOf = page.groups || {};
    clear(results).append(table([
      ['Registration id', r => h('a', { href: '#/registrations/' + encodeURIComponent(r.registrationId) }, r.registrationId)],
      ['Device id', r => r.deviceId || '—'],
      ['Status', r => badge(r.status)],
      ['Hub', r => r.assignedHub || '—'],
      ['Enrollment', r => groupsOf[r.registrationId] ? h('a', { href: '#/groups/' + encodeURIComponent(groupsOf[r.registrationId]) }, groupsOf[r.registrationId]) : 'individual'],
      ['Updated', r => fmtTime(r.lastUpdatedDateTimeUtc)],
    ], page.items, { label: 'Registrations', empty: 'No device has registered yet (or none matches).' }),
    h('div', { class: 'pager' },
      h('button', { type: 'button', class: 'secondary', disabled: at === 0, onclick: () => { at--; load(); } }, 'Previous'),
      h('span', { class: 'muted' }, `Page ${at + 1}`),
      h('button', { type: 'button', class: 'secondary', disabled: !page.continuation, onclick: () => { pages[at + 1] = page.continuation; at++; load(); } }, 'Next')));
  }
  await load();
}

function json(raw) {
  if (raw === undefined || raw === null) return '';
  try { return JSON.stringify(typeof raw === 'string' ? JSON.parse(raw) : raw, null, 2); } catch { return String(raw); }
}

// timeline merges the record's times and the allocation log into events,
// oldest first.
function timeline(state, entries) {
  const events = [];
  if (state.createdDateTimeUtc) events.push({ at: state.createdDateTimeUtc, title: 'Registration record created', body: [] });
  let prevHub = '';
  for (const e of entries) {
    const body = [];
    body.push(facts([
      ['Webhook', h('code', {}, e.webhookUrl)],
      ['Outcome', badge(e.outcome)],
      e.durationMs ? ['Took', `${e.durationMs} ms`] : null,
      e.retries ? ['Retries', String(e.retries)] : null,
      e.iotHubHostName ? ['Hub', prevHub && prevHub !== e.iotHubHostName ? `moved from ${prevHub} to ${e.iotHubHostName}` : e.iotHubHostName] : null,
      e.errorCode ? ['Error', `${e.errorCode}: ${e.errorMessage || ''}`] : null,
    ]));
    if (e.request) {
      body.push(h('details', {}, h('summary', {}, 'Request sent' + (e.requestTruncated ? ' (truncated)' : '')), h('pre', {}, json(e.request))));
    }
    const attempts = e.attempts || [];
    if (attempts.length) {
      body.push(h('ol', { class: 'attempts' }, attempts.map((a, i) => h('li', {},
        h('div', {}, h('strong', {}, `Attempt ${i + 1}`), ' at ', fmtTime(a.startedUtc), ': ',
          a.status ? `HTTP ${a.status}` : (a.error || 'no answer'), ` in ${a.durationMs} ms`,
          a.retryAfterMs ? `, retry after ${a.retryAfterMs} ms` : ''),
        a.error && a.status ? h('div', {}, a.error) : null,
        a.body ? h('details', {}, h('summary', {}, 'Answer' + (a.bodyTruncated ? ' (truncated)' : '')), h('pre', {}, json(a.body))) : null))));
    }
    events.push({ at: e.startedUtc, title: 'Custom allocation', cls: e.outcome === 'failed' ? 'failed' : '', body });
    if (e.iotHubHostName) prevHub = e.iotHubHostName;
  }
  if (state.lastUpdatedDateTimeUtc) {
    events.push({
      at: state.lastUpdatedDateTimeUtc, title: 'Current state', cls: state.status === 'failed' ? 'failed' : '',
      body: [facts([
        ['Status', badge(state.status)],
        state.substatus ? ['Substatus', state.substatus] : null,
        ['Hub', state.assignedHub || '—'],
        state.errorCode ? ['Error', `${state.errorCode}: ${state.errorMessage || ''}`] : null,
      ])],
    });
  }
  events.sort((a, b) => new Date(a.at) - new Date(b.at));
  return h('ol', { class: 'timeline', id: 'timeline', 'aria-label': 'Timeline' },
    events.map(ev => h('li', { class: ev.cls || '' }, h('div', { class: 'when' }, fmtTime(ev.at)), h('h3', {}, ev.title), ev.body)));
}

export async function registrationDetailPage(main, id) {
  const state = (await api.get('registrations/' + api.enc(id))).body;
  main.append(h('h1', {}, state.registrationId));
  const msg = h('div', { 'aria-live': 'polite' });
  const group = groupOf(state);
  main.append(h('div', { class: 'toolbar' },
    can('RegistrationStatusWrite') ? h('button', { type: 'button', class: 'danger', id: 'delete', onclick: async () => {
      if (!confirm(`Delete the registration record of ${id}? The device registers afresh next time.`)) return;
      try {
        await api.del('registrations/' + api.enc(id), { headers: { 'If-Match': state.etag } });
        navigate('#/registrations');
      } catch (e) { clear(msg).append(errorBox(e)); }
    } }, 'Delete registration') : null), msg);
  main.append(h('section', { class: 'panel' }, facts([
    ['Device id', state.deviceId],
    ['Status', h('span', { id: 'reg-status' }, badge(state.status))],
    ['Hub', h('span', { id: 'reg-hub' }, state.assignedHub || '—')],
    ['Enrollment', group ? h('a', { href: '#/groups/' + encodeURIComponent(group) }, 'group ' + group) : h('a', { href: '#/enrollments/' + encodeURIComponent(id) }, 'individual enrollment')],
    state.errorCode ? ['Error', `${state.errorCode}: ${state.errorMessage || ''}`] : null,
    ['Created', fmtTime(state.createdDateTimeUtc)],
    ['Updated', fmtTime(state.lastUpdatedDateTimeUtc)],
    state.payload ? ['Payload', h('pre', {}, json(state.payload))] : null,
  ])));
  let entries = [];
  try {
    entries = (await api.get('dpsd/registrations/' + api.enc(id) + '/allocationLog')).body.entries || [];
  } catch (e) { main.append(errorBox(e)); }
  main.append(h('h2', {}, 'Timeline'));
  if (!entries.length) main.append(h('p', { class: 'muted' }, 'No custom allocation ran for this device: its allocation log is empty, so the timeline shows the record alone.'));
  main.append(timeline(state, entries));
}
