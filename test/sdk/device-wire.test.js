'use strict';
// Wire-level checks of the device API that the Node SDK tolerates but other
// official SDKs (C#, C, Python, IoT Edge) depend on (device-protocol.md §1,
// §3, §4, §5). Raw HTTPS requests and a raw MQTT client (the `mqtt` package
// the Node SDK itself uses), SAS tokens built like each SDK builds them.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const https = require('node:https');
const crypto = require('node:crypto');
const mqtt = require('mqtt');
const { Service } = require('./lib/service');
const { info, host, testHub, uid, withTimeout, safeJSON, closeIdleConnections } = require('./lib/dpsd');

const T = { timeout: 120000 };
const svc = new Service();
const MAX_POLLS = 10;

after(closeIdleConnections);

// sas builds a device SAS token. style: 'node' (raw sr, sr&sig&skn&se),
// 'c' (sr with lower-case %2f, sig lower-case escaped, sr&sig&se&skn),
// 'csharp' (%2F, sr&sig&se&skn), 'python' (%2F, no skn).
function sas(style, scope, registrationId, key, expiry) {
  const raw = `${scope}/registrations/${registrationId}`;
  const upper = encodeURIComponent(raw);
  const sr = style === 'node' ? raw : style === 'c' ? upper.replace(/%2F/g, '%2f') : upper;
  const sig = crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(`${sr}\n${expiry}`).digest('base64');
  let esig = encodeURIComponent(sig);
  if (style === 'c') esig = esig.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
  switch (style) {
    case 'node': return `SharedAccessSignature sr=${sr}&sig=${esig}&skn=registration&se=${expiry}`;
    case 'python': return `SharedAccessSignature sr=${sr}&sig=${esig}&se=${expiry}`;
    default: return `SharedAccessSignature sr=${sr}&sig=${esig}&se=${expiry}&skn=registration`;
  }
}

function inAnHour() {
  return Math.floor(Date.now() / 1000) + 3600;
}

function request(method, path, headers, body) {
  return withTimeout(new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const h = { ...headers };
    if (data) h['Content-Length'] = data.length;
    const req = https.request({ host: host(), port: 443, method, path, headers: h }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => {
        let json;
        try {
          json = JSON.parse(text);
        } catch (_) { /* not JSON */ }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
    });
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  }), 30000, `${method} ${path}`);
}

function describe(res) {
  return `HTTP ${res.status} ${safeJSON(res.headers)} ${res.text}`;
}

async function enrollment() {
  const id = uid('wire');
  const e = await svc.putEnrollment({ registrationId: id, attestation: { type: 'symmetricKey' }, allocationPolicy: 'static', iotHubs: [testHub()] });
  return { id, key: e.attestation.symmetricKey.primaryKey };
}

function retryAfterMs(value) {
  const n = Number(value);
  return Number.isFinite(n) && n >= 0 ? Math.min(n, 5) * 1000 : 1000;
}

// registerHTTP does register + polls with raw requests and returns every response.
async function registerHTTP(id, token, body) {
  const scope = info().idScope;
  const headers = { Authorization: token, 'Content-Type': 'application/json; charset=utf-8', Accept: 'application/json' };
  const reg = await request('PUT', `/${scope}/registrations/${encodeURIComponent(id)}/register?api-version=2019-03-31`, headers, body === undefined ? { registrationId: id } : body);
  const polls = [];
  let last = reg;
  for (let i = 0; i < MAX_POLLS && last.status === 202 && last.json && last.json.operationId; i++) {
    await new Promise((r) => setTimeout(r, retryAfterMs(last.headers['retry-after'])));
    last = await request('GET', `/${scope}/registrations/${encodeURIComponent(id)}/operations/${encodeURIComponent(last.json.operationId)}?api-version=2019-03-31`, headers);
    polls.push(last);
  }
  return { reg, polls, final: last };
}

// dpsd answers a register whose result is ready at once with 202 and the
// final result (every SDK either takes it as is or polls the operation id it
// carries); with --poll-first it answers "assigning" with Retry-After: 0.
// Either way the answer is 202, carries operationId and, when terminal, the
// full registrationState that C# and IoT Edge dereference.
function checkRegisterAnswer(reg) {
  assert.equal(reg.status, 202, `register must answer 202 (C# and IoT Edge refuse 200): ${describe(reg)}`);
  assert.match(String(reg.headers['content-type']), /application\/json/, describe(reg));
  assert.ok(reg.json && reg.json.operationId, `operationId: ${describe(reg)}`);
  if (reg.json.status === 'assigning') {
    assert.ok(reg.headers['retry-after'] !== undefined, `Retry-After on an assigning answer: ${describe(reg)}`);
  } else {
    const st = reg.json.registrationState;
    assert.ok(st && st.registrationId && st.status === reg.json.status, `a terminal answer carries registrationState: ${describe(reg)}`);
    if (reg.json.status === 'assigned') assert.ok(st.assignedHub && st.deviceId, `assignedHub and deviceId: ${describe(reg)}`);
  }
}

test('HTTP register answers 202 with operationId: the final result, or "assigning" with Retry-After', T, async () => {
  const { id, key } = await enrollment();
  const { reg, final } = await registerHTTP(id, sas('node', info().idScope, id, key, inAnHour()));
  checkRegisterAnswer(reg);
  assert.equal(final.json.status, 'assigned', describe(final));
  // Polling the operation id of the answer gives the same result with 200.
  const scope = info().idScope;
  const poll = await request('GET', `/${scope}/registrations/${encodeURIComponent(id)}/operations/${encodeURIComponent(reg.json.operationId)}?api-version=2019-03-31`,
    { Authorization: sas('node', scope, id, key, inAnHour()) });
  assert.equal(poll.status, 200, describe(poll));
  assert.equal(poll.json.status, 'assigned', describe(poll));
  assert.equal(poll.json.registrationState.assignedHub, testHub(), describe(poll));
  await svc.deleteRegistration(id).catch(() => {});
  await svc.deleteEnrollment(id);
});

test('HTTP poll: 202 while assigning (with registrationState), 200 with the full result when assigned', T, async () => {
  const { id, key } = await enrollment();
  const { reg, polls, final } = await registerHTTP(id, sas('node', info().idScope, id, key, inAnHour()));
  for (const p of [reg, ...polls]) {
    assert.match(String(p.headers['content-type']), /application\/json/, describe(p));
    assert.ok(p.json && p.json.operationId, `every response carries operationId: ${describe(p)}`);
    if (p.status === 202 && p !== reg) {
      assert.equal(p.json.status, 'assigning', describe(p));
      assert.equal(p.json.registrationState && p.json.registrationState.registrationId, id, `registrationState.registrationId while assigning: ${describe(p)}`);
    }
  }
  assert.ok(final === reg ? final.status === 202 : final.status === 200, `polls end with 200; a final register answer is 202: ${describe(final)}`);
  assert.equal(final.json.status, 'assigned', describe(final));
  const st = final.json.registrationState;
  assert.ok(st, describe(final));
  assert.equal(st.registrationId, id);
  assert.equal(st.status, 'assigned');
  assert.equal(st.assignedHub, testHub());
  assert.equal(st.deviceId, id);
  await svc.deleteRegistration(id).catch(() => {});
  await svc.deleteEnrollment(id);
});

for (const style of ['c', 'csharp', 'python']) {
  test(`HTTP SAS token in the ${style} SDK's encoding is accepted`, T, async () => {
    const { id, key } = await enrollment();
    const { reg, final } = await registerHTTP(id, sas(style, info().idScope, id, key, inAnHour()));
    assert.ok(reg.status === 202 || reg.status === 200, `register: ${describe(reg)}`);
    assert.equal(final.status, 200, describe(final));
    assert.equal(final.json.status, 'assigned', describe(final));
    await svc.deleteRegistration(id).catch(() => {});
    await svc.deleteEnrollment(id);
  });
}

test('HTTP errors: bad SAS -> 401 JSON body; unknown operation -> 404 JSON body', T, async () => {
  const { id, key } = await enrollment();
  const bad = await registerHTTP(id, sas('node', info().idScope, id, crypto.randomBytes(32).toString('base64'), inAnHour()));
  assert.equal(bad.reg.status, 401, describe(bad.reg));
  assert.match(String(bad.reg.headers['content-type']), /application\/json/, describe(bad.reg));
  assert.equal(Math.floor(bad.reg.json.errorCode / 1000), 401, describe(bad.reg));
  assert.equal(typeof bad.reg.json.message, 'string', `message (IoT Edge needs it): ${describe(bad.reg)}`);
  assert.ok(bad.reg.json.trackingId, describe(bad.reg));

  const scope = info().idScope;
  const token = sas('node', scope, id, key, inAnHour());
  const op = await request('GET', `/${scope}/registrations/${id}/operations/4.0000000000000000.00000000-0000-0000-0000-000000000000?api-version=2019-03-31`,
    { Authorization: token });
  assert.equal(op.status, 404, describe(op));
  assert.match(String(op.headers['content-type']), /application\/json/, describe(op));
  assert.equal(Math.floor(op.json.errorCode / 1000), 404, describe(op));
  await svc.deleteEnrollment(id);
});

// ---------------------------------------------------------------------------
// MQTT

// mqttSession connects like the SDKs do and records every packet received.
async function mqttSession(id, token, opts = {}) {
  const scope = info().idScope;
  const packets = [];
  const client = mqtt.connect(`mqtts://${host()}:8883`, {
    clientId: id,
    username: `${scope}/registrations/${id}/api-version=2019-03-31&ClientVersion=dpsd-wire-test`,
    password: token,
    protocolVersion: 4,
    clean: opts.clean !== undefined ? opts.clean : true,
    keepalive: opts.keepalive !== undefined ? opts.keepalive : 60,
    reconnectPeriod: 0,
    connectTimeout: 10000,
    servername: host().match(/^[\d.]+$/) ? undefined : host(),
  });
  client.on('packetreceive', (p) => packets.push(p));
  await withTimeout(new Promise((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
    client.once('close', () => reject(new Error('connection closed before CONNACK')));
  }), 15000, 'MQTT connect');
  const responses = [];
  client.on('message', (topic, payload) => responses.push({ topic, payload: payload.toString() }));
  const granted = await withTimeout(new Promise((resolve, reject) => {
    client.subscribe('$dps/registrations/res/#', { qos: 1 }, (err, g) => (err ? reject(err) : resolve(g)));
  }), 15000, 'MQTT subscribe');
  return {
    client,
    packets,
    granted,
    responses,
    async publish(topic, payload, qos) {
      await withTimeout(new Promise((resolve, reject) => {
        client.publish(topic, payload, { qos }, (err) => (err ? reject(err) : resolve()));
      }), 15000, `MQTT publish ${topic}`);
    },
    async waitResponse(rid) {
      for (let i = 0; i < 300; i++) {
        const r = responses.find((x) => x.topic.includes(`$rid=${rid}`));
        if (r) return r;
        await new Promise((res) => setTimeout(res, 50));
      }
      throw new Error(`no response for $rid=${rid}; got ${safeJSON(responses)}`);
    },
    close() {
      return new Promise((resolve) => client.end(true, {}, () => resolve()));
    },
  };
}

const RESPONSE_TOPIC = /^\$dps\/registrations\/res\/(\d{3})\/\?\$rid=([^&$]+)(&retry-after=(\d+))?$/;

test('MQTT: register answers 202 (final result, or assigning + retry-after); SUBACK grants QoS 1; responses on $dps/registrations/res/{code}/?$rid={rid}[&retry-after=n]; PUBACK before the response', T, async () => {
  const { id, key } = await enrollment();
  const s = await mqttSession(id, sas('node', info().idScope, id, key, inAnHour()));
  try {
    assert.equal(s.granted[0] && s.granted[0].qos, 1, `SUBACK: ${safeJSON(s.granted)}`);
    const rid = crypto.randomUUID();
    await s.publish(`$dps/registrations/PUT/iotdps-register/?$rid=${rid}`, JSON.stringify({ registrationId: id, payload: { x: 1 } }), 1);
    let res = await s.waitResponse(rid);
    let m = RESPONSE_TOPIC.exec(res.topic);
    assert.ok(m, `response topic shape: ${res.topic}`);
    assert.equal(m[2], rid);
    assert.equal(m[1], '202', `register answers 202: ${res.topic} ${res.payload}`);
    let body = JSON.parse(res.payload);
    const registerStatus = body.status;
    const registerAnswer = `${res.topic} ${res.payload}`;
    assert.ok(body.operationId, res.payload);

    // PUBACK for our publish came before the response publish (C# requires it).
    const pubackIdx = s.packets.findIndex((p) => p.cmd === 'puback');
    const publishIdx = s.packets.findIndex((p) => p.cmd === 'publish' && p.topic.includes(`$rid=${rid}`));
    assert.ok(pubackIdx >= 0 && pubackIdx < publishIdx, `PUBACK must precede the response: ${safeJSON(s.packets.map((p) => p.cmd))}`);
    const respPacket = s.packets[publishIdx];
    assert.equal(respPacket.qos, 1, 'responses are published at QoS 1');

    for (let i = 0; i < MAX_POLLS && m[1] === '202' && body.status === 'assigning'; i++) {
      await new Promise((r) => setTimeout(r, retryAfterMs(m[4])));
      const prid = crypto.randomUUID();
      await s.publish(`$dps/registrations/GET/iotdps-get-operationstatus/?$rid=${prid}&operationId=${body.operationId}`, ' ', 1);
      res = await s.waitResponse(prid);
      m = RESPONSE_TOPIC.exec(res.topic);
      assert.ok(m, `poll response topic shape: ${res.topic}`);
      body = JSON.parse(res.payload);
    }
    if (res.topic !== registerAnswer.split(' ')[0]) assert.equal(m[1], '200', `a terminal poll answer is res/200: ${res.topic} ${res.payload}`);
    assert.equal(body.status, 'assigned', res.payload);
    assert.equal(body.registrationState.assignedHub, testHub(), res.payload);
    if (registerStatus === 'assigning') assert.ok(RESPONSE_TOPIC.exec(registerAnswer.split(' ')[0])[4] !== undefined, `retry-after on an assigning answer: ${registerAnswer}`);
  } finally {
    await s.close();
  }
  await svc.deleteRegistration(id).catch(() => {});
  await svc.deleteEnrollment(id);
});

test('MQTT: C-SDK-style register (QoS 0, integer $rid, lower-case %2f SAS) and C#-style empty payload are accepted', T, async () => {
  const { id, key } = await enrollment();
  const s = await mqttSession(id, sas('c', info().idScope, id, key, inAnHour()), { keepalive: 0 });
  try {
    await s.publish('$dps/registrations/PUT/iotdps-register/?$rid=7', JSON.stringify({ registrationId: id }), 0);
    const res = await s.waitResponse('7');
    const m = RESPONSE_TOPIC.exec(res.topic);
    assert.ok(m && (m[1] === '202' || m[1] === '200'), `QoS 0 register: ${res.topic} ${res.payload}`);

    await s.publish('$dps/registrations/PUT/iotdps-register/?$rid=8', '', 1);
    const res2 = await s.waitResponse('8');
    const m2 = RESPONSE_TOPIC.exec(res2.topic);
    assert.ok(m2 && (m2[1] === '202' || m2[1] === '200'), `empty register payload (C#): ${res2.topic} ${res2.payload}`);
  } finally {
    await s.close();
  }
  await svc.deleteRegistration(id).catch(() => {});
  await svc.deleteEnrollment(id);
});

test('MQTT: a wrong SAS is refused (CONNACK 5 or res/401 with a JSON body)', T, async () => {
  const { id } = await enrollment();
  const token = sas('node', info().idScope, id, crypto.randomBytes(32).toString('base64'), inAnHour());
  let s;
  try {
    s = await mqttSession(id, token);
  } catch (err) {
    assert.match(String(err.message), /not authori[sz]ed|bad user ?name or password|connection closed/i, `CONNACK refusal: ${err.message}`);
    await svc.deleteEnrollment(id);
    return;
  }
  try {
    const rid = 'r1';
    await s.publish(`$dps/registrations/PUT/iotdps-register/?$rid=${rid}`, JSON.stringify({ registrationId: id }), 1);
    const res = await s.waitResponse(rid);
    const m = RESPONSE_TOPIC.exec(res.topic);
    assert.ok(m, res.topic);
    assert.equal(m[1], '401', `${res.topic} ${res.payload}`);
    const body = JSON.parse(res.payload);
    assert.equal(Math.floor(body.errorCode / 1000), 401, res.payload);
  } finally {
    await s.close();
  }
  await svc.deleteEnrollment(id);
});
