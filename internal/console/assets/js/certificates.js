// CA certificates: upload, proof of possession (verification code, then a
// certificate signed with the CA's key whose subject is that code), verify.
import { h, clear, table, badge, errorBox, okBox, field, fmtTime } from './dom.js';
import * as api from './api.js';

export async function certificatesPage(main) {
  main.append(h('h1', {}, 'Certificates'),
    h('p', { class: 'muted' }, 'CA certificates that X.509 enrollment groups may refer to. Prove you hold a CA\'s key by signing a certificate whose subject is its verification code.'));
  const msg = h('div', { 'aria-live': 'polite', id: 'cert-message' });
  const list = h('div');
  main.append(msg, list);
  const readPEM = (area, file) => {
    file.addEventListener('change', async () => { if (file.files[0]) area.value = await file.files[0].text(); });
  };
  async function load() {
    const certs = ((await api.get('dpsd/certificates')).body || {}).value || [];
    clear(list).append(table([
      ['Name', c => c.name],
      ['Subject', c => c.properties.subject],
      ['Thumbprint', c => h('code', {}, c.properties.thumbprint)],
      ['Expires', c => fmtTime(c.properties.expiry)],
      ['Status', c => badge(c.properties.isVerified ? 'verified' : 'unverified')],
      ['', c => h('div', { class: 'toolbar' },
        c.properties.isVerified ? null : h('button', { type: 'button', class: 'secondary prove', onclick: () => proof(c) }, 'Prove possession'),
        h('button', { type: 'button', class: 'danger', onclick: async () => {
          if (!confirm(`Delete certificate ${c.name}?`)) return;
          try { await api.del('dpsd/certificates/' + api.enc(c.name), { headers: { 'If-Match': c.etag } }); await load(); } catch (e) { clear(msg).append(errorBox(e)); }
        } }, 'Delete'))],
    ], certs, { label: 'Certificates', empty: 'No certificate uploaded.' }));
  }
  async function proof(c) {
    clear(msg);
    try {
      const r = (await api.post('dpsd/certificates/' + api.enc(c.name) + '/generateverificationcode', {}, { headers: { 'If-Match': c.etag } })).body;
      const pem = h('textarea', { spellcheck: 'false', id: 'verification-pem' });
      const file = h('input', { type: 'file', accept: '.pem,.crt,.cer' });
      readPEM(pem, file);
      msg.append(h('div', { class: 'panel' },
        h('p', {}, 'Verification code: ', h('code', { id: 'verification-code' }, r.properties.verificationCode)),
        h('p', {}, 'Sign a certificate with subject CN=<the code> using the CA\'s key (e.g. ', h('code', {}, 'dpsd cert verify'), '), then paste or upload it:'),
        h('form', { class: 'stack', onsubmit: async (ev) => {
          ev.preventDefault();
          try {
            await api.post('dpsd/certificates/' + api.enc(c.name) + '/verify', { certificate: pem.value.trim() }, { headers: { 'If-Match': r.etag } });
            clear(msg).append(okBox(`${c.name} is verified.`));
            await load();
          } catch (e) { msg.append(errorBox(e)); }
        } }, field('Verification certificate (PEM)', pem), field('or a file', file), h('div', {}, h('button', { type: 'submit', id: 'verify-cert' }, 'Verify')))));
    } catch (e) { msg.append(errorBox(e)); }
  }
  const name = h('input', { type: 'text', id: 'cert-name', spellcheck: 'false' });
  const pem = h('textarea', { id: 'cert-pem', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
  const file = h('input', { type: 'file', id: 'cert-file', accept: '.pem,.crt,.cer' });
  readPEM(pem, file);
  main.append(h('h2', {}, 'Upload a CA certificate'), h('form', { class: 'stack', onsubmit: async (ev) => {
    ev.preventDefault();
    clear(msg);
    try {
      await api.put('dpsd/certificates/' + api.enc(name.value.trim()), { certificate: pem.value.trim() });
      name.value = ''; pem.value = '';
      await load();
    } catch (e) { msg.append(errorBox(e)); }
  } }, field('Name', name), field('Certificate (PEM)', pem), field('or a file', file), h('div', {}, h('button', { type: 'submit', id: 'upload-cert' }, 'Upload'))));
  await load();
}
