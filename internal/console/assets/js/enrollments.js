// Enrollment groups and individual enrollments: list, search, page,
// create, edit (with the etag read), delete, keys on demand, derived keys.
import { h, clear, table, badge, errorBox, okBox, field, facts, fmtTime } from './dom.js';
import * as api from './api.js';
import { can, navigate } from './app.js';

const kinds = {
  group: { collection: 'enrollmentGroups', idField: 'enrollmentGroupId', route: '#/groups', one: 'enrollment group', many: 'Enrollment groups' },
  individual: { collection: 'enrollments', idField: 'registrationId', route: '#/enrollments', one: 'individual enrollment', many: 'Individual enrollments' },
};

const pageSize = 25;
// searchBound caps how many records a search reads.
const searchBound = 5000;

function attestationType(e) {
  return e.attestation ? e.attestation.type : '';
}

export async function enrollmentListPage(main, kind) {
  const k = kinds[kind];
  main.append(h('h1', {}, k.many));
  const search = h('input', { type: 'search', id: 'search', placeholder: 'id contains…', 'aria-label': 'Search by id' });
  const results = h('div', { id: 'results', 'aria-live': 'polite' });
  const tools = h('div', { class: 'toolbar' },
    h('form', { role: 'search', class: 'toolbar', onsubmit: (ev) => { ev.preventDefault(); load(); } },
      field('Search', search), h('button', { type: 'submit', class: 'secondary', id: 'search-button' }, 'Search')),
    can('EnrollmentWrite') ? h('a', { class: 'button', href: k.route + '/new', id: 'create' }, 'Add ' + k.one) : null);
  main.append(tools, results);

  // pages holds the continuation token of each page seen, for Previous.
  let pages = [''];
  let at = 0;

  async function load() {
    clear(results).append(h('p', { class: 'muted' }, 'Loading…'));
    const text = search.value.trim().toLowerCase();
    let items = [], next = '';
    try {
      if (text) {
        let cont = '';
        do {
          const r = await api.query(k.collection + '/query', { continuation: cont, pageSize: 1000 });
          items.push(...r.items.filter(e => String(e[k.idField]).toLowerCase().includes(text)));
          cont = r.continuation;
        } while (cont && items.length < searchBound);
      } else {
        const r = await api.query(k.collection + '/query', { continuation: pages[at], pageSize });
        items = r.items;
        next = r.continuation;
      }
    } catch (e) {
      clear(results).append(errorBox(e));
      return;
    }
    const cols = [
      ['Id', e => h('a', { href: k.route + '/' + encodeURIComponent(e[k.idField]) }, e[k.idField])],
      kind === 'individual' ? ['Device id', e => e.deviceId || '—'] : null,
      ['Attestation', e => attestationType(e)],
      ['Status', e => badge(e.provisioningStatus || 'enabled')],
      ['Allocation', e => e.allocationPolicy || 'default'],
      ['Hubs', e => (e.iotHubs || []).join(', ') || 'all linked'],
      ['Updated', e => fmtTime(e.lastUpdatedDateTimeUtc)],
    ].filter(Boolean);
    clear(results).append(table(cols, items, { label: k.many, empty: text ? 'No match.' : 'None yet.' }));
    if (!text) {
      results.append(h('div', { class: 'pager' },
        h('button', { type: 'button', class: 'secondary', disabled: at === 0, onclick: () => { at--; load(); } }, 'Previous'),
        h('span', { class: 'muted' }, `Page ${at + 1}`),
        h('button', { type: 'button', class: 'secondary', id: 'next-page', disabled: !next, onclick: () => { pages[at + 1] = next; at++; load(); } }, 'Next')));
    } else {
      results.append(h('p', { class: 'muted' }, `${items.length} match${items.length === 1 ? '' : 'es'}.`));
    }
  }
  await load();
}

export async function enrollmentDetailPage(main, kind, id) {
  const k = kinds[kind];
  const r = await api.get(k.collection + '/' + api.enc(id));
  const e = r.body;
  main.append(h('h1', {}, e[k.idField]));
  const msg = h('div', { 'aria-live': 'polite' });
  const actions = h('div', { class: 'toolbar' },
    can('EnrollmentWrite') ? h('a', { class: 'button', href: k.route + '/' + encodeURIComponent(id) + '/edit', id: 'edit' }, 'Edit') : null,
    can('EnrollmentWrite') ? h('button', { type: 'button', class: 'danger', id: 'delete', onclick: async () => {
      if (!confirm(`Delete ${k.one} ${id}? Devices it vouches for can no longer register.`)) return;
      try {
        await api.del(k.collection + '/' + api.enc(id), { headers: { 'If-Match': e.etag } });
        navigate(k.route);
      } catch (err) { clear(msg).append(errorBox(err)); }
    } }, 'Delete') : null,
    can('RegistrationStatusRead') && kind === 'group' ? h('a', { class: 'button secondary', href: '#/registrations?group=' + encodeURIComponent(id) }, 'Registrations') : null,
    can('RegistrationStatusRead') && kind === 'individual' ? h('a', { class: 'button secondary', href: '#/registrations/' + encodeURIComponent(id) }, 'Registration') : null);
  main.append(actions, msg);
  const att = e.attestation || {};
  main.append(h('section', { class: 'panel' }, facts([
    kind === 'individual' ? ['Device id', e.deviceId || '(the registration id)'] : null,
    ['Attestation', att.type],
    ['Provisioning status', badge(e.provisioningStatus)],
    ['Allocation policy', e.allocationPolicy || 'the instance default'],
    ['Hubs', (e.iotHubs || []).join(', ') || 'every linked hub'],
    e.customAllocationDefinition ? ['Webhook', h('code', {}, e.customAllocationDefinition.webhookUrl)] : null,
    e.customAllocationDefinition ? ['Webhook API version', e.customAllocationDefinition.apiVersion] : null,
    ['Reprovisioning', e.reprovisionPolicy ? `update hub assignment: ${!!e.reprovisionPolicy.updateHubAssignment}, migrate data: ${!!e.reprovisionPolicy.migrateDeviceData}` : 'default'],
    ['IoT Edge', e.capabilities && e.capabilities.iotEdge ? 'yes' : 'no'],
    ['ETag', h('code', { id: 'etag' }, e.etag)],
    ['Created', fmtTime(e.createdDateTimeUtc)],
    ['Updated', fmtTime(e.lastUpdatedDateTimeUtc)],
  ])));
  if (att.x509) {
    const certs = att.x509.signingCertificates || att.x509.clientCertificates || att.x509.caReferences || {};
    main.append(h('h2', {}, 'Certificates'), h('pre', {}, JSON.stringify(certs, null, 2)));
  }
  if (e.initialTwin) {
    main.append(h('h2', {}, 'Initial twin'), h('pre', { id: 'initial-twin' }, JSON.stringify(e.initialTwin, null, 2)));
  }
  if (att.type === 'symmetricKey') {
    const keys = h('div', { id: 'keys' });
    main.append(h('h2', {}, 'Keys'), keys);
    keys.append(h('button', { type: 'button', class: 'secondary', id: 'show-keys', onclick: async () => {
      try {
        const a = (await api.post(k.collection + '/' + api.enc(id) + '/attestationmechanism', {})).body;
        clear(keys).append(facts([
          ['Primary key', h('code', { id: 'primary-key' }, a.symmetricKey.primaryKey)],
          ['Secondary key', h('code', {}, a.symmetricKey.secondaryKey)],
        ]), h('button', { type: 'button', class: 'secondary', onclick: () => { clear(keys); navigate(location.hash); } }, 'Hide keys'));
      } catch (err) { keys.append(errorBox(err)); }
    } }, 'Show keys'));
    if (kind === 'group') {
      const regID = h('input', { type: 'text', id: 'derive-registration-id', spellcheck: 'false' });
      const out = h('div', { 'aria-live': 'polite' });
      main.append(h('h2', {}, 'Device key'),
        h('form', { class: 'stack', onsubmit: async (ev) => {
          ev.preventDefault();
          clear(out);
          try {
            const d = (await api.post('derivekey', { groupId: id, registrationId: regID.value.trim() })).body;
            out.append(facts([
              ['Registration id', d.registrationId],
              ['Derived primary key', h('code', { id: 'derived-key' }, d.primaryKey)],
              ['Derived secondary key', h('code', {}, d.secondaryKey)],
            ]));
          } catch (err) { out.append(errorBox(err)); }
        } },
          h('p', { class: 'muted' }, 'A device of this group signs with HMAC-SHA256 of its registration id under the group key. Compute it here for a device you set up by hand.'),
          field('Registration id', regID), h('div', {}, h('button', { type: 'submit', id: 'derive' }, 'Compute')), out));
    }
  }
}

// enrollmentEditPage creates (id null) or edits an enrollment. An edit
// sends back the etag it read: a change made meanwhile is refused (412)
// rather than overwritten.
export async function enrollmentEditPage(main, kind, id) {
  const k = kinds[kind];
  let e = null;
  if (id) e = (await api.get(k.collection + '/' + api.enc(id))).body;
  main.append(h('h1', {}, id ? `Edit ${id}` : `Add ${k.one}`));
  let hubNames = [];
  if (can('ServiceConfig')) {
    try { hubNames = ((await api.get('dpsd/linkedhubs')).body || []).map(x => x.name); } catch { /* the field stays free text */ }
  }
  const att = (e && e.attestation) || { type: 'symmetricKey' };
  const idInput = h('input', { type: 'text', id: 'id', required: true, spellcheck: 'false', value: id || '', readonly: !!id });
  const deviceID = h('input', { type: 'text', id: 'device-id', spellcheck: 'false', value: (e && e.deviceId) || '' });
  const types = kind === 'group' ? [['symmetricKey', 'Symmetric key'], ['x509', 'X.509 (signing certificate)']]
    : [['symmetricKey', 'Symmetric key'], ['x509', 'X.509 (device certificate)'], ['tpm', 'TPM']];
  const type = h('select', { id: 'attestation', disabled: !!id }, types.map(([v, l]) => h('option', { value: v, selected: att.type === v }, l)));
  const primaryKey = h('input', { type: 'text', id: 'primary-key-input', spellcheck: 'false', placeholder: id ? 'unchanged' : 'generated' });
  const secondaryKey = h('input', { type: 'text', id: 'secondary-key-input', spellcheck: 'false', placeholder: id ? 'unchanged' : 'generated' });
  const pem = h('textarea', { id: 'certificate', spellcheck: 'false', placeholder: id ? 'unchanged' : '-----BEGIN CERTIFICATE-----' });
  const pemFile = h('input', { type: 'file', id: 'certificate-file', accept: '.pem,.crt,.cer' });
  pemFile.addEventListener('change', async () => { if (pemFile.files[0]) pem.value = await pemFile.files[0].text(); });
  const ek = h('textarea', { id: 'endorsement-key', spellcheck: 'false' });
  const keyBox = h('fieldset', {}, h('legend', {}, 'Symmetric keys (leave empty to generate)'), field('Primary key', primaryKey), field('Secondary key', secondaryKey));
  const certBox = h('fieldset', {}, h('legend', {}, 'Certificate (PEM)'), field('Paste', pem), field('or upload a file', pemFile));
  const tpmBox = h('fieldset', {}, h('legend', {}, 'TPM'), field('Endorsement key (base64)', ek));
  const showType = () => {
    keyBox.hidden = type.value !== 'symmetricKey';
    certBox.hidden = type.value !== 'x509';
    tpmBox.hidden = type.value !== 'tpm';
  };
  type.addEventListener('change', showType);
  showType();

  const policy = h('select', { id: 'allocation-policy' },
    [['', 'Instance default'], ['hashed', 'Evenly weighted distribution (hashed)'], ['geoLatency', 'Lowest latency (geoLatency)'], ['static', 'Static configuration'], ['custom', 'Custom (webhook)']]
      .map(([v, l]) => h('option', { value: v, selected: ((e && e.allocationPolicy) || '') === v }, l)));
  const hubs = h('input', { type: 'text', id: 'hubs', spellcheck: 'false', value: ((e && e.iotHubs) || []).join(', '), list: 'hub-names' });
  const webhook = h('input', { type: 'url', id: 'webhook-url', spellcheck: 'false', value: (e && e.customAllocationDefinition && e.customAllocationDefinition.webhookUrl) || '' });
  const webhookVersion = h('input', { type: 'text', id: 'webhook-api-version', value: (e && e.customAllocationDefinition && e.customAllocationDefinition.apiVersion) || '2021-10-01' });
  const webhookBox = h('fieldset', {}, h('legend', {}, 'Custom allocation'), field('Webhook URL', webhook), field('API version', webhookVersion));
  const showPolicy = () => { webhookBox.hidden = policy.value !== 'custom'; };
  policy.addEventListener('change', showPolicy);
  showPolicy();
  const twin = h('textarea', { id: 'initial-twin', spellcheck: 'false' });
  twin.value = e && e.initialTwin ? JSON.stringify(e.initialTwin, null, 2) : '';
  const rp = (e && e.reprovisionPolicy) || { updateHubAssignment: true, migrateDeviceData: true };
  const updateHub = h('input', { type: 'checkbox', id: 'update-hub', checked: rp.updateHubAssignment !== false });
  const migrate = h('input', { type: 'checkbox', id: 'migrate-data', checked: rp.migrateDeviceData !== false });
  const enabled = h('input', { type: 'checkbox', id: 'enabled', checked: !e || e.provisioningStatus !== 'disabled' });
  const edge = h('input', { type: 'checkbox', id: 'iot-edge', checked: !!(e && e.capabilities && e.capabilities.iotEdge) });
  const msg = h('div', { 'aria-live': 'polite', id: 'form-message' });

  const form = h('form', { class: 'stack', id: 'enrollment-form', novalidate: true, onsubmit: async (ev) => {
    ev.preventDefault();
    clear(msg);
    const body = e ? JSON.parse(JSON.stringify(e)) : {};
    const theID = idInput.value.trim();
    if (!theID) { msg.append(errorBox('Give an id.')); idInput.focus(); return; }
    body[k.idField] = theID;
    if (kind === 'individual') {
      if (deviceID.value.trim()) body.deviceId = deviceID.value.trim(); else delete body.deviceId;
    }
    if (!e) {
      if (type.value === 'symmetricKey') {
        body.attestation = { type: 'symmetricKey', symmetricKey: {} };
      } else if (type.value === 'x509') {
        if (!pem.value.includes('BEGIN CERTIFICATE')) { msg.append(errorBox('Paste or upload a PEM certificate.')); pem.focus(); return; }
        const cert = { primary: { certificate: pem.value.trim() } };
        body.attestation = { type: 'x509', x509: kind === 'group' ? { signingCertificates: cert } : { clientCertificates: cert } };
      } else {
        if (!ek.value.trim()) { msg.append(errorBox('Give the TPM endorsement key.')); ek.focus(); return; }
        body.attestation = { type: 'tpm', tpm: { endorsementKey: ek.value.trim() } };
      }
    }
    if (body.attestation && body.attestation.type === 'symmetricKey') {
      body.attestation.symmetricKey = body.attestation.symmetricKey || {};
      if (primaryKey.value.trim()) body.attestation.symmetricKey.primaryKey = primaryKey.value.trim();
      if (secondaryKey.value.trim()) body.attestation.symmetricKey.secondaryKey = secondaryKey.value.trim();
    }
    if (e && body.attestation && body.attestation.type === 'x509' && pem.value.trim()) {
      const cert = { primary: { certificate: pem.value.trim() } };
      body.attestation.x509 = kind === 'group' ? { signingCertificates: cert } : { clientCertificates: cert };
    }
    if (policy.value) body.allocationPolicy = policy.value; else delete body.allocationPolicy;
    const hubList = hubs.value.split(',').map(s => s.trim()).filter(Boolean);
    if (hubList.length) body.iotHubs = hubList; else delete body.iotHubs;
    delete body.iotHubHostName;
    if (policy.value === 'custom') {
      if (!webhook.value.trim()) { msg.append(errorBox('Custom allocation needs a webhook URL.')); webhook.focus(); return; }
      body.customAllocationDefinition = { webhookUrl: webhook.value.trim(), apiVersion: webhookVersion.value.trim() || '2021-10-01' };
    } else {
      delete body.customAllocationDefinition;
    }
    if (twin.value.trim()) {
      try {
        const t = JSON.parse(twin.value);
        if (typeof t !== 'object' || t === null || Array.isArray(t)) throw new Error('The initial twin must be a JSON object, e.g. {"tags":{},"properties":{"desired":{}}}.');
        body.initialTwin = t;
      } catch (err) {
        msg.append(errorBox('The initial twin is not valid JSON: ' + err.message));
        twin.focus();
        return;
      }
    } else {
      delete body.initialTwin;
    }
    body.reprovisionPolicy = { updateHubAssignment: updateHub.checked, migrateDeviceData: migrate.checked };
    body.provisioningStatus = enabled.checked ? 'enabled' : 'disabled';
    body.capabilities = { iotEdge: edge.checked };
    const headers = {};
    if (e) headers['If-Match'] = e.etag;
    else headers['If-None-Match'] = '*';
    try {
      await api.put(k.collection + '/' + api.enc(theID), body, { headers });
      navigate(k.route + '/' + encodeURIComponent(theID));
    } catch (err) {
      if (err.status === 412) {
        msg.append(h('div', { class: 'error', role: 'alert', id: 'stale' },
          `Someone changed this ${k.one} after you opened it (its etag is no longer ${e ? e.etag : ''}), so your edit was not saved. `,
          h('a', { href: k.route + '/' + encodeURIComponent(theID) }, 'See the current version'), ' and edit again.'));
      } else if (err.status === 409) {
        msg.append(errorBox(`An ${k.one} with the id ${theID} already exists.`));
      } else {
        msg.append(errorBox(err));
      }
    }
  } },
    field(kind === 'group' ? 'Group name' : 'Registration id', idInput),
    kind === 'individual' ? field('Device id (empty: the registration id)', deviceID) : null,
    field('Attestation', type), keyBox, certBox, tpmBox,
    field('Allocation policy', policy),
    field('IoT hubs (comma-separated; empty: every linked hub)', hubs),
    h('datalist', { id: 'hub-names' }, hubNames.map(n => h('option', { value: n }))),
    webhookBox,
    field('Initial twin (JSON)', twin, '{"tags": {...}, "properties": {"desired": {...}}}'),
    h('fieldset', {}, h('legend', {}, 'When a device registers again'),
      h('label', { class: 'inline' }, updateHub, 'Re-evaluate its hub assignment'),
      h('label', { class: 'inline' }, migrate, 'Migrate its data to the new hub')),
    h('label', { class: 'inline' }, enabled, 'Enabled'),
    h('label', { class: 'inline' }, edge, 'IoT Edge device'),
    msg,
    h('div', { class: 'toolbar' }, h('button', { type: 'submit', id: 'save' }, id ? 'Save' : 'Create'),
      h('a', { class: 'button secondary', href: id ? k.route + '/' + encodeURIComponent(id) : k.route }, 'Cancel')));
  main.append(form);
  (id ? policy : idInput).focus();
}
