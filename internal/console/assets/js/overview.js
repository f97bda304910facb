import { h, svg, facts, table, badge, errorBox, clear } from './dom.js';
import * as api from './api.js';
import { can } from './app.js';
import { hubHealth, healthCell } from './hubs.js';

export async function overviewPage(main) {
  main.append(h('h1', {}, 'Overview'));
  const info = (await api.get('info')).body;
  const secret = h('span', { class: 'secret', id: 'connection-string-box' });
  if (can('ServiceConfig')) {
    secret.append(h('button', { type: 'button', class: 'secondary', id: 'reveal-connection-string', onclick: async () => {
      try {
        const r = await api.post('connectionstring', {});
        clear(secret).append(h('code', { id: 'connection-string-value' }, r.body.connectionString),
          h('button', { type: 'button', class: 'secondary', id: 'hide-connection-string', onclick: () => { clear(secret).append(h('span', { class: 'muted' }, 'hidden')); } }, 'Hide'));
      } catch (e) { secret.append(errorBox(e)); }
    } }, 'Reveal'));
  } else {
    secret.append(h('span', { class: 'muted' }, 'needs the ServiceConfig right'));
  }
  main.append(h('section', { class: 'panel', 'aria-labelledby': 'svc-h' }, h('h2', { id: 'svc-h' }, 'Service'),
    facts([
      ['ID scope', h('code', { id: 'id-scope' }, info.idScope)],
      ['Host name', info.hostName],
      ['Device and service API (HTTPS, MQTT/AMQP over WebSockets)', h('code', {}, info.httpsEndpoint)],
      ['MQTT', h('code', {}, info.mqttEndpoint)],
      info.amqpEndpoint ? ['AMQP', h('code', {}, info.amqpEndpoint)] : null,
      info.caCertFile ? ['CA certificate (on the server)', h('code', {}, info.caCertFile)] : null,
      ['Service connection string', secret],
    ])));

  if (can('EnrollmentRead') && can('RegistrationStatusRead')) {
    try {
      const s = (await api.get('dpsd/stats')).body;
      const by = s.byStatus || {};
      const card = (label, n, id) => h('div', { class: 'card' }, h('div', { class: 'n', id }, String(n)), h('div', { class: 'muted' }, label));
      main.append(h('section', { 'aria-labelledby': 'counts-h' }, h('h2', { id: 'counts-h' }, 'Counts' + (s.truncated ? ' (at least)' : '')),
        h('div', { class: 'cards' },
          card('Enrollment groups', s.enrollmentGroups, 'count-groups'),
          card('Individual enrollments', s.enrollments, 'count-enrollments'),
          card('Registrations', s.registrations, 'count-registrations'),
          Object.keys(by).sort().map(k => card('Registrations ' + k, by[k], 'count-' + k)))));
      main.append(h('section', { 'aria-labelledby': 'rate-h' }, h('h2', { id: 'rate-h' }, 'Registrations per minute, last hour'),
        chart(s.perMinute || [])));
    } catch (e) { main.append(errorBox(e)); }
  }
  if (can('ServiceConfig')) {
    try {
      const hubs = await hubHealth();
      main.append(h('section', { 'aria-labelledby': 'hubs-h' }, h('h2', { id: 'hubs-h' }, 'Linked hubs'),
        table([
          ['Hub', x => x.name],
          ['Weight', x => String(x.allocationWeight)],
          ['Location', x => x.location || '—'],
          ['Health', healthCell],
        ], hubs, { label: 'Linked hubs', empty: 'No hub is linked: devices cannot be assigned until one is (see Linked hubs).' })));
    } catch (e) { main.append(errorBox(e)); }
  }
}

// chart draws 60 bars, one per minute, as SVG built node by node.
function chart(perMinute) {
  const max = Math.max(1, ...perMinute);
  const total = perMinute.reduce((a, b) => a + b, 0);
  const w = 600, hgt = 100;
  const bw = w / 60;
  const bars = perMinute.map((n, i) => {
    const bh = Math.round((n / max) * (hgt - 4));
    return svg('rect', { x: (i * bw + 1).toFixed(1), y: hgt - bh, width: (bw - 2).toFixed(1), height: bh },
      svg('title', {}, `${n} in minute -${59 - i}`));
  });
  return h('figure', {},
    svg('svg', { class: 'chart', viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: 'none', role: 'img',
      'aria-label': `${total} registrations updated in the last hour, at most ${max} in a minute` }, ...bars),
    h('figcaption', { class: 'muted' }, `${total} in the last hour; the highest minute had ${max === 1 && total === 0 ? 0 : max}. Oldest on the left.`));
}
