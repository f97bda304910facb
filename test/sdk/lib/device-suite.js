'use strict';
// The device-side conformance suite, run once per transport by
// device-http.test.js, device-mqtt.test.js, device-mqttws.test.js,
// device-amqp.test.js and device-amqpws.test.js.
// Wire facts: the device protocol notes (device-protocol.md) and service-api.md
// (§5 webhook, §6.4 precedence).

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { Service } = require('./service');
const { register, sasSecurityClient, timingSummary } = require('./device');
const {
  testHub, uid, deriveKey, randomKey, expectReject, describeError, dpsErrorBody, amqpError, safeJSON, closeIdleConnections,
} = require('./dpsd');

const T = { timeout: 180000 };

function assertAssigned(result, want, what) {
  assert.ok(result, `${what}: no result`);
  assert.equal(result.status, 'assigned', `${what}: status: ${safeJSON(result)}`);
  assert.equal(result.registrationId, want.registrationId, `${what}: registrationId: ${safeJSON(result)}`);
  assert.equal(result.assignedHub, want.hub, `${what}: assignedHub: ${safeJSON(result)}`);
  assert.equal(result.deviceId, want.deviceId, `${what}: deviceId: ${safeJSON(result)}`);
  assert.ok(result.etag, `${what}: etag: ${safeJSON(result)}`);
  assert.ok(result.createdDateTimeUtc, `${what}: createdDateTimeUtc: ${safeJSON(result)}`);
  assert.ok(result.lastUpdatedDateTimeUtc, `${what}: lastUpdatedDateTimeUtc: ${safeJSON(result)}`);
}

// assertUnauthorized accepts the ways a DPS may refuse a device
// (device-protocol.md §3.4, §5.5): HTTP 401 / MQTT res/401 -> UnauthorizedError
// with a 401xxx body; MQTT CONNACK 5 -> "Not authorized"; AMQP: the request
// rejected with amqp:unauthorized-access and the 401xxx body as description,
// which the Node AMQP transport passes on as the error itself.
function assertUnauthorized(err, what) {
  const connack = /not authori[sz]ed/i.test(String(err && err.message));
  const amqp = amqpError(err);
  assert.ok(err && (err.name === 'UnauthorizedError' || connack || (amqp && amqp.condition === 'amqp:unauthorized-access')),
    `${what}: expected UnauthorizedError (401), got ${describeError(err)}`);
  if (!connack) {
    const body = dpsErrorBody(err);
    assert.ok(body && typeof body.errorCode === 'number', `${what}: expected a DPS error body, got ${describeError(err)}`);
    assert.equal(Math.floor(body.errorCode / 1000), 401, `${what}: errorCode ${safeJSON(body)}`);
  }
}

// assertDisabled: the Node client reports a `disabled` registration as
// SyntaxError('status is disabled') carrying the body (device-protocol.md §9).
function assertDisabled(err, registrationId, what) {
  assert.equal(err && err.name, 'SyntaxError', `${what}: expected SyntaxError 'status is disabled', got ${describeError(err)}`);
  assert.equal(err.message, 'status is disabled', `${what}: ${describeError(err)}`);
  assert.equal(err.result && err.result.status, 'disabled', `${what}: ${describeError(err)}`);
  const state = err.result.registrationState;
  assert.ok(state, `${what}: a terminal response carries registrationState: ${describeError(err)}`);
  assert.equal(state.registrationId, registrationId, `${what}: ${describeError(err)}`);
  assert.equal(state.status, 'disabled', `${what}: ${describeError(err)}`);
}

// startWebhook runs a custom allocation webhook on 127.0.0.1 that answers
// with respond(requestBody) and records each request body.
async function startWebhook(respond) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { data += c; });
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(data);
      } catch (_) {
        body = { unparsable: data };
      }
      requests.push({ url: req.url, headers: req.headers, body });
      const answer = respond(body);
      res.writeHead(answer.status || 200, { 'Content-Type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(answer.body || {}));
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/api/allocate?code=webhook-secret`,
    requests,
    close: () => new Promise((resolve) => {
      if (server.closeAllConnections) server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

function defineDeviceSuite(transport) {
  const svc = new Service();
  const hub = testHub();
  const staticAllocation = { allocationPolicy: 'static', iotHubs: [hub] };

  after(() => {
    for (const line of timingSummary()) console.log(line);
    closeIdleConnections();
  });

  async function createIndividual(id, extra = {}) {
    return svc.putEnrollment({ registrationId: id, attestation: { type: 'symmetricKey' }, ...staticAllocation, ...extra });
  }

  async function createGroup(id, extra = {}) {
    return svc.putGroup({ enrollmentGroupId: id, attestation: { type: 'symmetricKey' }, ...staticAllocation, ...extra });
  }

  test(`[${transport}] individual enrollment: register with the device key and a payload; service state matches`, T, async () => {
    const id = uid(`dev-${transport}-ind`);
    const deviceId = `${id}-device`;
    const enrollment = await createIndividual(id, { deviceId });
    const key = enrollment.attestation.symmetricKey.primaryKey;

    const result = await register(transport, id, key, { payload: { firmware: '1.2.3', sku: 'e2e' }, label: 'individual first' });
    assertAssigned(result, { registrationId: id, hub, deviceId }, 'device result');
    assert.equal(result.substatus, 'initialAssignment', `substatus: ${safeJSON(result)}`);

    const state = await svc.getRegistration(id);
    assert.equal(state.registrationId, id);
    assert.equal(state.status, 'assigned');
    assert.equal(state.assignedHub, result.assignedHub);
    assert.equal(state.deviceId, result.deviceId);
    assert.equal(state.etag, result.etag, 'service-side registration state etag equals the one the device got');
    assert.equal(state.createdDateTimeUtc, result.createdDateTimeUtc);

    await svc.deleteRegistration(id);
    await svc.deleteEnrollment(id);
  });

  test(`[${transport}] re-registration (primary then secondary key) returns the same hub and device id`, T, async () => {
    const id = uid(`dev-${transport}-rereg`);
    const enrollment = await createIndividual(id);
    const keys = enrollment.attestation.symmetricKey;

    const first = await register(transport, id, keys.primaryKey, { label: 'individual first' });
    assertAssigned(first, { registrationId: id, hub, deviceId: id }, 'first registration');
    const second = await register(transport, id, keys.secondaryKey, { label: 'individual again' });
    assertAssigned(second, { registrationId: id, hub, deviceId: id }, 're-registration');
    assert.equal(second.createdDateTimeUtc, first.createdDateTimeUtc, 'the registration record is the same');

    const state = await svc.getRegistration(id);
    assert.equal(state.etag, second.etag, 'service-side etag equals the latest device result');
    await svc.deleteRegistration(id);
    await svc.deleteEnrollment(id);
  });

  test(`[${transport}] group enrollment: derived keys register; states queried by group; delete state`, T, async () => {
    const groupId = uid(`grp-${transport}`);
    const group = await createGroup(groupId);
    const gk = group.attestation.symmetricKey;
    const a = uid(`dev-${transport}-ga`);
    const b = uid(`dev-${transport}-gb`);

    const ra = await register(transport, a, deriveKey(gk.primaryKey, a), { label: 'group member' });
    assertAssigned(ra, { registrationId: a, hub, deviceId: a }, `member ${a}`);
    const rb = await register(transport, b, deriveKey(gk.secondaryKey, b), { label: 'group member' });
    assertAssigned(rb, { registrationId: b, hub, deviceId: b }, `member ${b} (secondary-derived key)`);

    const q = svc.client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, groupId, 1);
    const pages = await svc.drain(q);
    const states = pages.flatMap((p) => p.items);
    assert.equal(pages[0].response.headers['x-ms-item-type'], 'DeviceRegistration');
    for (const p of pages) assert.ok(p.items.length <= 1, `page size 1: ${safeJSON(p.items)}`);
    assert.deepEqual(states.map((s) => s.registrationId).sort(), [a, b].sort(), `states of the group: ${safeJSON(states)}`);
    const sa = states.find((s) => s.registrationId === a);
    assert.equal(sa.status, 'assigned');
    assert.equal(sa.assignedHub, hub);
    assert.equal(sa.deviceId, a);
    assert.equal(sa.etag, ra.etag);

    const got = await svc.getRegistration(b);
    assert.equal(got.etag, rb.etag);

    // delete with the state object (etag -> If-Match), then it is gone
    await svc.deleteRegistration(got);
    const gone = await expectReject(svc.getRegistration(b), 'registration state after delete');
    assert.equal(gone.message, 'Not found', describeError(gone));

    // deleting the group does not delete its registration states (service-api.md §6.5)
    await svc.deleteGroup(groupId);
    const kept = await svc.getRegistration(a);
    assert.equal(kept.registrationId, a);
    await svc.deleteRegistration(a);
  });

  test(`[${transport}] custom allocation webhook: payload round trip`, T, async () => {
    const id = uid(`dev-${transport}-custom`);
    const devicePayload = { MyDeviceFirmwareVersion: '12.0.2.5', MyDeviceProvisioningVersion: '1.0.0.0' };
    const webhookPayload = { assignedBy: 'e2e-webhook', region: 'lab' };
    const webhook = await startWebhook(() => ({
      body: { iotHubHostName: hub, payload: webhookPayload, initialTwin: { tags: { via: 'webhook' }, properties: { desired: {} } } },
    }));
    try {
      const enrollment = await svc.putEnrollment({
        registrationId: id,
        attestation: { type: 'symmetricKey' },
        allocationPolicy: 'custom',
        iotHubs: [hub],
        customAllocationDefinition: { webhookUrl: webhook.url, apiVersion: '2021-10-01' },
      });
      const key = enrollment.attestation.symmetricKey.primaryKey;
      const result = await register(transport, id, key, { payload: devicePayload, label: 'custom allocation' });
      assert.ok(webhook.requests.length >= 1, `the webhook must be called (custom allocation); it got no request; device result: ${safeJSON(result)}`);
      assertAssigned(result, { registrationId: id, hub, deviceId: id }, 'device result');
      assert.deepEqual(result.payload, webhookPayload, 'the webhook payload reaches the device');

      const req = webhook.requests[webhook.requests.length - 1];
      assert.equal(req.url, '/api/allocate?code=webhook-secret', 'the webhook URL is called as configured');
      const body = req.body;
      assert.ok(body.individualEnrollment, `individualEnrollment in the request: ${safeJSON(body)}`);
      assert.equal(body.individualEnrollment.registrationId, id);
      const sk = body.individualEnrollment.attestation && body.individualEnrollment.attestation.symmetricKey;
      assert.ok(!sk || !sk.primaryKey, `keys are stripped from the enrollment copy: ${safeJSON(body.individualEnrollment.attestation)}`);
      assert.match(body.individualEnrollment.customAllocationDefinition.webhookUrl, /\?\*\*\*\*$/, 'webhook query string masked');
      assert.equal(body.deviceRuntimeContext.registrationId, id);
      assert.deepEqual(body.deviceRuntimeContext.payload, devicePayload, 'the device payload reaches the webhook');
      assert.ok(Array.isArray(body.linkedHubs) && body.linkedHubs.includes(hub), `linkedHubs: ${safeJSON(body.linkedHubs)}`);

      const state = await svc.getRegistration(id);
      assert.deepEqual(state.payload, webhookPayload, 'the service-side registration state carries the payload');
      assert.equal(state.etag, result.etag);
      await svc.deleteRegistration(id);
      await svc.deleteEnrollment(id);
    } finally {
      await webhook.close();
    }
  });

  test(`[${transport}] wrong key -> 401 UnauthorizedError`, T, async () => {
    const id = uid(`dev-${transport}-badkey`);
    await createIndividual(id);
    const err = await expectReject(register(transport, id, randomKey(64), { label: 'wrong key' }), 'register with a wrong key');
    assertUnauthorized(err, 'wrong key');
    const none = await expectReject(svc.getRegistration(id), 'no registration state after a refused registration');
    assert.equal(none.message, 'Not found', describeError(none));
    await svc.deleteEnrollment(id);
  });

  test(`[${transport}] the group key itself is not a device key -> 401`, T, async () => {
    const groupId = uid(`grp-${transport}-raw`);
    const group = await createGroup(groupId);
    const id = uid(`dev-${transport}-rawkey`);
    const err = await expectReject(register(transport, id, group.attestation.symmetricKey.primaryKey, { label: 'group key' }), 'register with the underived group key');
    assertUnauthorized(err, 'group key used directly');
    await svc.deleteGroup(groupId);
  });

  test(`[${transport}] expired SAS token -> 401`, T, async () => {
    const id = uid(`dev-${transport}-expired`);
    const enrollment = await createIndividual(id);
    const key = enrollment.attestation.symmetricKey.primaryKey;
    const expired = sasSecurityClient(id, key, Math.floor(Date.now() / 1000) - 3600);
    const err = await expectReject(register(transport, id, key, { security: expired, label: 'expired token' }), 'register with an expired token');
    assertUnauthorized(err, 'expired token');

    // the same key with a valid expiry works (the refusal was the expiry)
    const valid = sasSecurityClient(id, key, Math.floor(Date.now() / 1000) + 600);
    const result = await register(transport, id, key, { security: valid, label: 'custom security client' });
    assertAssigned(result, { registrationId: id, hub, deviceId: id }, 'valid token');
    await svc.deleteRegistration(id);
    await svc.deleteEnrollment(id);
  });

  test(`[${transport}] unknown registration id -> 401 (existence not revealed)`, T, async () => {
    const id = uid(`dev-${transport}-unknown`);
    const err = await expectReject(register(transport, id, randomKey(64), { label: 'unknown id' }), 'register an unknown registration id');
    assertUnauthorized(err, 'unknown registration id');
  });

  test(`[${transport}] disabled individual enrollment -> registration status disabled`, T, async () => {
    const id = uid(`dev-${transport}-disabled`);
    const enrollment = await createIndividual(id, { provisioningStatus: 'disabled' });
    const key = enrollment.attestation.symmetricKey.primaryKey;
    const err = await expectReject(register(transport, id, key, { label: 'disabled' }), 'register against a disabled enrollment');
    assertDisabled(err, id, 'disabled individual enrollment');

    // enabling it again lets the device in
    const current = await svc.getEnrollment(id);
    current.provisioningStatus = 'enabled';
    await svc.putEnrollment(current);
    const result = await register(transport, id, key, { label: 're-enabled' });
    assertAssigned(result, { registrationId: id, hub, deviceId: id }, 'after re-enabling');
    await svc.deleteRegistration(id);
    await svc.deleteEnrollment(id);
  });

  test(`[${transport}] a disabled individual enrollment blocks one member of an enabled group`, T, async () => {
    const groupId = uid(`grp-${transport}-block`);
    const group = await createGroup(groupId);
    const gk = group.attestation.symmetricKey;
    const blocked = uid(`dev-${transport}-blocked`);
    const member = uid(`dev-${transport}-member`);
    const blockedKey = deriveKey(gk.primaryKey, blocked);
    // service-api.md §6.4: a disabled symmetric-key individual enrollment with
    // the member's registration id (here holding the member's derived keys).
    await svc.putEnrollment({
      registrationId: blocked,
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: blockedKey, secondaryKey: deriveKey(gk.secondaryKey, blocked) } },
      provisioningStatus: 'disabled',
      ...staticAllocation,
    });

    const err = await expectReject(register(transport, blocked, blockedKey, { label: 'blocked member' }), 'blocked member registers');
    assertDisabled(err, blocked, 'blocked member');

    const result = await register(transport, member, deriveKey(gk.primaryKey, member), { label: 'group member' });
    assertAssigned(result, { registrationId: member, hub, deviceId: member }, 'other member');

    // deleting the individual enrollment re-enables enrollment via the group
    await svc.deleteEnrollment(blocked);
    const unblocked = await register(transport, blocked, blockedKey, { label: 'group member' });
    assertAssigned(unblocked, { registrationId: blocked, hub, deviceId: blocked }, 'after deleting the disabled individual enrollment');

    for (const id of [blocked, member]) await svc.deleteRegistration(id).catch(() => {});
    await svc.deleteGroup(groupId);
  });

  test(`[${transport}] disabled enrollment group -> members disabled`, T, async () => {
    const groupId = uid(`grp-${transport}-off`);
    const group = await createGroup(groupId, { provisioningStatus: 'disabled' });
    const id = uid(`dev-${transport}-off`);
    const err = await expectReject(register(transport, id, deriveKey(group.attestation.symmetricKey.primaryKey, id), { label: 'disabled group' }),
      'member of a disabled group registers');
    assertDisabled(err, id, 'member of a disabled group');
    await svc.deleteRegistration(id).catch(() => {});
    await svc.deleteGroup(groupId);
  });
}

module.exports = { defineDeviceSuite };
