// Linked hubs (where devices are assigned) and dpsd's built-in hubs
// (devices, twins and live telemetry).
import { h, clear, table, badge, errorBox, okBox, field, facts, fmtTime } from './dom.js';
import * as api from './api.js';
import { can, navigate } from './app.js';

// hubHealth returns the linked hubs with a health each: what the node's
// background checks found (healthy, unhealthy, unknown until the first
// check), and with checks turned off, whether a built-in hub runs.
export async function hubHealth() {
  const linked = (await api.get('dpsd/linkedhubs')).body || [];
  let builtin = [];
  if (linked.some(l => !l.health)) {
    try { builtin = (await api.get('dpsd/hubs')).body || []; } catch { /* health unknown */ }
  }
  const byHost = new Map(builtin.map(b => [String(b.hostName).toLowerCase(), b]));
  return linked.map(l => {
    if (l.health) return { ...l, healthInfo: l.health, health: l.health.state };
    const b = byHost.get(String(l.name).toLowerCase());
    return { ...l, builtin: b, health: b ? (b.running ? 'healthy' : 'down') : 'unknown' };
  });
}

// healthCell shows a hub's health, and why when it is not healthy.
export function healthCell(x) {
  const i = x.healthInfo;
  if (!i) return badge(x.health);
  const note = i.lastError ? `${i.consecutiveFailures} failed check(s): ${i.lastError}`
    : i.lastCheckUtc ? `checked ${fmtTime(i.lastCheckUtc)}, ${i.latencyMs || 0} ms` : 'not checked yet';
  return h('span', {}, badge(x.health), ' ', h('small', { class: 'muted health-note' }, note));
}

export async function linkedHubsPage(main) {
  main.append(h('h1', {}, 'Linked hubs'),
    h('p', { class: 'muted' }, 'The IoT hubs devices may be assigned to. Weight and the apply-policy switch steer the allocation policies; location feeds geoLatency.'));
  const msg = h('div', { 'aria-live': 'polite' });
  const list = h('div', { id: 'linked-hubs' });
  main.append(msg, list);
  async function load() {
    const hubs = await hubHealth();
    clear(list).append(table([
      ['Hub', x => x.name],
      ['Weight', x => String(x.allocationWeight)],
      ['Apply allocation policy', x => x.applyAllocationPolicy ? 'yes' : 'no'],
      ['Location', x => x.location || '—'],
      ['Health', healthCell],
      ['Connection string', x => h('code', {}, x.connectionString)],
      ['CA', x => x.caCertificates ? 'own CA bundle' : 'system roots'],
      ['', x => h('div', { class: 'toolbar' },
        h('button', { type: 'button', class: 'secondary change-weight', onclick: () => editWeight(x) }, 'Change weight'),
        h('button', { type: 'button', class: 'secondary rotate-key', onclick: () => rotateKey(x) }, 'Rotate key'),
        h('button', { type: 'button', class: 'danger', onclick: async () => {
          if (!confirm(`Unlink ${x.name}? Devices already assigned there keep working; no new device is assigned to it.`)) return;
          try { await api.del('dpsd/linkedhubs/' + api.enc(x.name), { headers: x.etag ? { 'If-Match': x.etag } : {} }); await load(); } catch (e) { clear(msg).append(errorBox(e)); }
        } }, 'Unlink'))],
    ], hubs, { label: 'Linked hubs', empty: 'No hub is linked yet.' }));
  }
  async function editWeight(x) {
    const v = prompt(`Allocation weight of ${x.name}`, String(x.allocationWeight));
    if (v === null) return;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) { clear(msg).append(errorBox('The weight is a whole number.')); return; }
    try {
      await api.call('PATCH', 'dpsd/linkedhubs/' + api.enc(x.name), { body: { allocationWeight: n }, headers: x.etag ? { 'If-Match': x.etag } : {} });
      await load();
    } catch (e) { clear(msg).append(errorBox(e)); }
  }
  async function rotateKey(x) {
    const v = prompt(`New connection string of ${x.name} (same host name; dpsd checks the hub accepts it first)`, '');
    if (!v) return;
    try {
      await api.post('dpsd/linkedhubs/' + api.enc(x.name) + '/rotateKey', { connectionString: v.trim() });
      clear(msg).append(okBox(`The key of ${x.name} was rotated.`));
      await load();
    } catch (e) { clear(msg).append(errorBox(e)); }
  }
  const cs = h('input', { type: 'password', id: 'hub-connection-string', autocomplete: 'off', spellcheck: 'false' });
  const caBundle = h('textarea', { id: 'hub-ca', rows: '3', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
  const weight = h('input', { type: 'number', id: 'hub-weight', min: '0', value: '1' });
  const apply = h('input', { type: 'checkbox', id: 'hub-apply', checked: true });
  const location_ = h('input', { type: 'text', id: 'hub-location' });
  main.append(h('h2', {}, 'Link a hub'), h('form', { class: 'stack', onsubmit: async (ev) => {
    ev.preventDefault();
    clear(msg);
    try {
      await api.post('dpsd/linkedhubs', { connectionString: cs.value.trim(), allocationWeight: Number(weight.value || 1), applyAllocationPolicy: apply.checked, location: location_.value.trim() || undefined, caCertificates: caBundle.value.trim() || undefined });
      cs.value = '';
      caBundle.value = '';
      await load();
    } catch (e) { msg.append(errorBox(e)); }
  } }, field('Hub connection string (iothubowner or a policy with registry write)', cs), field('Allocation weight', weight),
    h('label', { class: 'inline' }, apply, 'Apply allocation policy'), field('Location (for geoLatency)', location_),
    field('CA certificates of a hub with a private certificate (PEM; empty: the system roots)', caBundle),
    h('div', {}, h('button', { type: 'submit' }, 'Link'))));
  await load();
}

export async function builtinHubsPage(main) {
  main.append(h('h1', {}, 'Built-in hubs'),
    h('p', { class: 'muted' }, 'IoT hubs dpsd runs itself, for development and tests: devices connect to them with the Azure device SDKs.'));
  const msg = h('div', { 'aria-live': 'polite' });
  const list = h('div');
  main.append(msg, list);
  async function load() {
    const hubs = (await api.get('dpsd/hubs')).body || [];
    clear(list).append(table([
      ['Name', x => h('a', { href: '#/hubs/' + encodeURIComponent(x.name) }, x.name)],
      ['Host name', x => x.hostName],
      ['Address', x => x.address],
      ['State', x => x.running ? badge('running') : h('span', {}, badge('down'), ' ', x.error || '')],
      ['Created', x => fmtTime(x.created)],
    ], hubs, { label: 'Built-in hubs', empty: 'No built-in hub yet.' }));
  }
  const name = h('input', { type: 'text', id: 'new-hub-name', spellcheck: 'false' });
  main.append(h('h2', {}, 'Create a built-in hub'), h('form', { class: 'stack', onsubmit: async (ev) => {
    ev.preventDefault();
    clear(msg);
    try {
      await api.put('dpsd/hubs/' + api.enc(name.value.trim()), {});
      name.value = '';
      await load();
    } catch (e) { msg.append(errorBox(e)); }
  } }, field('Name', name), h('div', {}, h('button', { type: 'submit' }, 'Create'))));
  await load();
}

export async function builtinHubPage(main, name) {
  const hub = (await api.get('dpsd/hubs/' + api.enc(name))).body;
  main.append(h('h1', {}, 'Hub ' + hub.name));
  const msg = h('div', { 'aria-live': 'polite' });
  main.append(h('div', { class: 'toolbar' }, h('button', { type: 'button', class: 'danger', onclick: async () => {
    if (!confirm(`Delete built-in hub ${name} and its devices?`)) return;
    try { await api.del('dpsd/hubs/' + api.enc(name)); navigate('#/hubs'); } catch (e) { clear(msg).append(errorBox(e)); }
  } }, 'Delete hub')), msg);
  main.append(h('section', { class: 'panel' }, facts([
    ['Host name', hub.hostName], ['Address', hub.address], ['State', hub.running ? badge('running') : badge('down')],
    hub.httpsAddr ? ['HTTPS', hub.httpsAddr] : null, hub.mqttAddr ? ['MQTT', hub.mqttAddr] : null,
    hub.amqpAddr ? ['AMQP', hub.amqpAddr] : null,
    ['Hosts line', h('code', {}, hub.hostsLine)],
  ])));
  const devices = (await api.get('dpsd/hubs/' + api.enc(name) + '/devices?top=200')).body.devices || [];
  const twinBox = h('div', { 'aria-live': 'polite' });
  main.append(h('h2', {}, 'Devices'), table([
    ['Device id', d => d.deviceId],
    ['Status', d => badge(d.status)],
    ['Connection', d => d.connectionState || '—'],
    ['', d => h('button', { type: 'button', class: 'secondary', onclick: async () => {
      try {
        const t = (await api.get('dpsd/hubs/' + api.enc(name) + '/devices/' + api.enc(d.deviceId) + '/twin')).body;
        clear(twinBox).append(h('h3', {}, 'Twin of ' + d.deviceId), h('pre', {}, JSON.stringify(t, null, 2)));
      } catch (e) { clear(twinBox).append(errorBox(e)); }
    } }, 'Twin')],
  ], devices, { label: 'Devices', empty: 'No device yet.' }), twinBox);

  // Live telemetry: poll for messages after the last one seen while the
  // page is shown.
  const feed = h('ol', { id: 'telemetry', 'aria-live': 'off' });
  main.append(h('h2', {}, 'Live telemetry'), h('p', { class: 'muted' }, 'The newest messages devices sent to this hub, refreshed every few seconds.'), feed);
  let after = 0;
  const here = location.hash;
  async function poll() {
    if (location.hash !== here) return;
    try {
      const msgs = (await api.get('dpsd/hubs/' + api.enc(name) + '/messages?after=' + after + '&top=50')).body || [];
      for (const m of msgs) {
        after = Math.max(after, m.sequenceNumber);
        feed.prepend(h('li', {}, fmtTime(m.enqueuedTime), ' ', h('strong', {}, m.deviceId), ': ', h('code', {}, m.body)));
      }
      while (feed.children.length > 200) feed.lastChild.remove();
    } catch { /* try again on the next tick */ }
    setTimeout(poll, 3000);
  }
  poll();
}
