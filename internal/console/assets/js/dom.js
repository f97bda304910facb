// Small DOM helpers. Text always goes in as text nodes, never as HTML, so
// nothing a device or an operator typed can become markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.className = v;
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'value') {
      el.value = v;
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

const svgNS = 'http://www.w3.org/2000/svg';

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) {
    if (c instanceof Node) el.appendChild(c);
    else if (c !== undefined && c !== null) el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

export function fmtTime(s) {
  if (!s) return '';
  const d = new Date(s);
  if (isNaN(d)) return String(s);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function badge(text) {
  return h('span', { class: 'badge ' + String(text || '').replace(/[^A-Za-z]/g, '') }, text || '—');
}

// table renders rows with a header; each column is [label, row => cell].
// At phone width each cell shows its label (CSS reads data-label).
export function table(columns, rows, opts = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'responsive', 'aria-label': opts.label || null },
      h('thead', {}, h('tr', {}, columns.map(([label]) => h('th', { scope: 'col' }, label)))),
      h('tbody', {}, rows.length === 0
        ? h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, opts.empty || 'Nothing here yet.'))
        : rows.map(r => h('tr', {}, columns.map(([label, cell]) => h('td', { 'data-label': label }, cell(r))))))));
}

export function errorBox(err) {
  return h('div', { class: 'error', role: 'alert' }, err && err.message ? err.message : String(err));
}

export function okBox(text) {
  return h('div', { class: 'ok', role: 'status' }, text);
}

// field builds a labelled input; extra attributes go to the input.
export function field(label, input, hint) {
  return h('label', {}, label, input, hint ? h('span', { class: 'muted' }, hint) : null);
}

export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(p => p).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}
