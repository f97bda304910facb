'use strict';
// The custom allocation outcome table (spec README, "Custom allocation
// outcomes"), one test per row and transport, with the official Node SDKs.
// Run by TestCustomAllocationOutcomes (test/e2e/outcomes_test.go), which
// runs the webhook (one path per row) and passes under "outcomes" in the
// info file (DPSD_INFO): webhook (base URL), unreachable (base URL where
// nothing listens until POST webhook+paths.controlOpen), hub, idsFile (where
// to write the registration ids used per path), paths.
//
// Each test checks the registration status and error code through the
// service SDK, what the device SDK reports (device-protocol.md §9: failed →
// ProvisioningRegistrationFailedError with err.result; disabled →
// SyntaxError 'status is disabled'), which statuses the device was told on
// the way (assigning while dpsd retries or waits), and the allocation log.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { SharedAccessSignature } = require('azure-iot-common');
const { info, host, uid, deriveKey, randomKey, withTimeout, expectReject, describeError, safeJSON, closeIdleConnections } = require('./lib/dpsd');
const { transports } = require('./lib/device');
const { Service } = require('./lib/service');

const oc = (() => {
  try {
    return info().outcomes;
  } catch (_) {
    return undefined;
  }
})();
const T = { skip: oc ? false : 'no outcomes data in DPSD_INFO (run via go test ./test/e2e -run Outcomes)', timeout: 120000 };
const REGISTER_MS = 90000;
const STEP_MS = 20000;

const svc = oc ? new Service() : undefined;

// used records the registration ids per webhook path for the Go side.
const used = {};
after(() => {
  if (oc) fs.writeFileSync(oc.idsFile, JSON.stringify(used));
  closeIdleConnections();
});

// customGroup creates an enabled (or disabled) symmetric-key group with
// custom allocation to one row's webhook path, and returns its key.
async function customGroup(prefix, path, status = 'enabled', base = oc.webhook) {
  const primaryKey = randomKey(64);
  await svc.putGroup({
    enrollmentGroupId: uid(prefix),
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, secondaryKey: randomKey(64) } },
    provisioningStatus: status,
    allocationPolicy: 'custom',
    customAllocationDefinition: { webhookUrl: base + path, apiVersion: '2021-10-01' },
    iotHubs: [oc.hub],
  });
  return primaryKey;
}

// observedRegistration starts a registration with the official client and
// records every status the transport delivers to the SDK's state machine
// (register answer and polls), which the SDK itself does not expose.
function observedRegistration(transportName, registrationId, key) {
  const transport = transports[transportName]();
  const seen = [];
  for (const method of ['registrationRequest', 'queryOperationStatus']) {
    const original = transport[method].bind(transport);
    transport[method] = (...args) => {
      const callback = args.pop();
      original(...args, (err, result, ...rest) => {
        seen.push({ method, status: result && result.status, error: err ? err.name : undefined });
        callback(err, result, ...rest);
      });
    };
  }
  const client = ProvisioningDeviceClient.create(host(), info().idScope, transport, new SymmetricKeySecurityClient(registrationId, key));
  client.setProvisioningPayload({ row: 'outcome-table' });
  const done = withTimeout(client.register(), REGISTER_MS, `${transportName} register ${registrationId}`, () => client.cancel(() => {}));
  // Keep an unobserved rejection from ending the process before it is awaited.
  done.catch(() => {});
  return { done, seen };
}

function remember(path, id) {
  (used[path] = used[path] || []).push(id);
}

// newDevice makes a group for a row and the id and key of one member.
async function newDevice(transport, row, path, status) {
  const groupKey = await customGroup(`outcome-${row}`, path, status);
  const id = uid(`dev-${transport}-${row}`);
  remember(path, id);
  return { id, key: deriveKey(groupKey, id) };
}

// allocationLog reads dpsd's allocation log of a registration
// (GET /dpsd/registrations/{id}/allocationLog), signed with the service key.
function allocationLog(id) {
  const cs = Object.fromEntries(info().serviceConnectionString.split(';').map((kv) => {
    const i = kv.indexOf('=');
    return [kv.slice(0, i), kv.slice(i + 1)];
  }));
  const sas = SharedAccessSignature.create(cs.HostName, cs.SharedAccessKeyName, cs.SharedAccessKey,
    Math.floor(Date.now() / 1000) + 3600).toString();
  return withTimeout(new Promise((resolve, reject) => {
    const req = https.request({
      host: host(),
      path: `/dpsd/registrations/${encodeURIComponent(id)}/allocationLog`,
      headers: { Authorization: sas, Accept: 'application/json' },
    }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { data += c; });
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(data)) : reject(new Error(`allocationLog ${id}: ${res.statusCode} ${data}`))));
    });
    req.on('error', reject);
    req.end();
  }), STEP_MS, `allocationLog ${id}`);
}

async function lastLogEntry(id) {
  const log = await allocationLog(id);
  assert.ok(log.entries && log.entries.length > 0, `allocation log of ${id}: ${safeJSON(log)}`);
  return log.entries[log.entries.length - 1];
}

// assertFailed checks a failed row end to end.
async function assertFailed(transport, row, path, errorCode, attemptStatus) {
  const d = await newDevice(transport, row, path);
  const { done, seen } = observedRegistration(transport, d.id, d.key);
  const err = await expectReject(done, `${row}: register`);
  assert.equal(err.name, 'ProvisioningRegistrationFailedError', describeError(err));
  assert.ok(err.result, `the SDK error carries the result: ${describeError(err)}`);
  assert.equal(err.result.status, 'failed', describeError(err));
  assert.equal(err.result.registrationState.errorCode, errorCode, describeError(err));
  assert.equal(err.result.registrationState.registrationId, d.id, describeError(err));
  assert.equal(seen[seen.length - 1].status, 'failed', `statuses seen: ${safeJSON(seen)}`);

  const state = await svc.getRegistration(d.id);
  assert.equal(state.status, 'failed', safeJSON(state));
  assert.equal(state.errorCode, errorCode, safeJSON(state));
  assert.ok(state.errorMessage, safeJSON(state));
  assert.equal(state.assignedHub, undefined, safeJSON(state));

  const e = await lastLogEntry(d.id);
  assert.equal(e.outcome, 'failed', safeJSON(e));
  assert.equal(e.errorCode, errorCode, safeJSON(e));
  assert.equal(e.attempts.length, 1, `not retried: ${safeJSON(e)}`);
  assert.equal(e.attempts[0].status, attemptStatus, safeJSON(e));
  return { d, state, entry: e };
}

// assertAssignedAfterAssigning checks a row where the device is told
// "assigning" first and is assigned in the end.
async function assertAssignedAfterAssigning(transport, row, path) {
  const d = await newDevice(transport, row, path);
  const { done, seen } = observedRegistration(transport, d.id, d.key);
  const result = await done;
  assert.equal(result.status, 'assigned', safeJSON(result));
  assert.equal(result.assignedHub, oc.hub, safeJSON(result));
  assert.equal(result.deviceId, d.id, safeJSON(result));
  const statuses = seen.map((s) => s.status);
  assert.equal(statuses[0], 'assigning', `the register answer must be "assigning": ${safeJSON(seen)}`);
  assert.equal(statuses[statuses.length - 1], 'assigned', safeJSON(seen));
  assert.ok(seen.some((s) => s.method === 'queryOperationStatus'), `the device polled: ${safeJSON(seen)}`);

  const state = await svc.getRegistration(d.id);
  assert.equal(state.status, 'assigned', safeJSON(state));
  assert.equal(state.assignedHub, oc.hub, safeJSON(state));
  return { d, result, seen };
}

for (const transport of (oc && oc.transports) || ['http', 'mqtt']) {
  test(`[${transport}] 200 with a linked hub → assigned with the webhook's payload`, T, async () => {
    const d = await newDevice(transport, 'ok', oc.paths.ok);
    const { done } = observedRegistration(transport, d.id, d.key);
    const result = await done;
    assert.equal(result.status, 'assigned', safeJSON(result));
    assert.equal(result.assignedHub, oc.hub, safeJSON(result));
    assert.equal(result.deviceId, d.id, safeJSON(result));
    assert.deepEqual(result.payload, { answeredOnCall: 1 }, safeJSON(result));
    const state = await svc.getRegistration(d.id);
    assert.equal(state.status, 'assigned', safeJSON(state));
    assert.equal(state.substatus, 'initialAssignment', safeJSON(state));
    const e = await lastLogEntry(d.id);
    assert.equal(e.outcome, 'assigned', safeJSON(e));
    assert.equal(e.iotHubHostName, oc.hub, safeJSON(e));
  });

  test(`[${transport}] 200 with iotHubHostName "" → failed 400208`, T, async () => {
    await assertFailed(transport, 'empty-hub', oc.paths.emptyHub, 400208, 200);
  });

  test(`[${transport}] 200 with iotHubHostName null → failed 400208`, T, async () => {
    await assertFailed(transport, 'null-hub', oc.paths.nullHub, 400208, 200);
  });

  test(`[${transport}] 401 → failed 400209`, T, async () => {
    await assertFailed(transport, 'unauthorized', oc.paths.unauthorized, 400209, 401);
  });

  test(`[${transport}] 400 → failed 400207, the webhook's answer in the allocation log`, T, async () => {
    const { state, entry } = await assertFailed(transport, 'bad-request', oc.paths.badRequest, 400207, 400);
    assert.match(state.errorMessage, /status code: 400/, safeJSON(state));
    assert.doesNotMatch(state.errorMessage, /Not a device of ours/, safeJSON(state));
    assert.match(entry.attempts[0].webhookText, /Not a device of ours\./, safeJSON(entry));
  });

  test(`[${transport}] 429, then 200 → assigning, retried after 1 s, assigned`, T, async () => {
    const { d } = await assertAssignedAfterAssigning(transport, 'throttled', oc.paths.throttleThenOK);
    const e = await lastLogEntry(d.id);
    assert.equal(e.outcome, 'assigned', safeJSON(e));
    assert.deepEqual(e.attempts.map((a) => a.status), [429, 200], safeJSON(e));
    assert.equal(e.retries, 1, safeJSON(e));
    assert.equal(e.attempts[0].retryAfterMs, 1000, `Azure's first retry comes after 1 s: ${safeJSON(e)}`);
  });

  test(`[${transport}] 500, then 200 → assigning, retried after 1 s, assigned`, T, async () => {
    const { d } = await assertAssignedAfterAssigning(transport, 'server-error', oc.paths.errorThenOK);
    const e = await lastLogEntry(d.id);
    assert.deepEqual(e.attempts.map((a) => a.status), [500, 200], safeJSON(e));
    assert.equal(e.attempts[0].retryAfterMs, 1000, safeJSON(e));
  });

  test(`[${transport}] a webhook slower than the register wait → assigning, then assigned`, T, async () => {
    const { d } = await assertAssignedAfterAssigning(transport, 'slow', oc.paths.slow);
    const e = await lastLogEntry(d.id);
    assert.deepEqual(e.attempts.map((a) => a.status), [200], safeJSON(e));
  });

  test(`[${transport}] disabled enrollment group → disabled, webhook not called`, T, async () => {
    const d = await newDevice(transport, 'disabled-group', oc.paths.disabled, 'disabled');
    const { done } = observedRegistration(transport, d.id, d.key);
    assertDisabled(await expectReject(done, 'disabled group'), d.id);
    const state = await svc.getRegistration(d.id);
    assert.equal(state.status, 'disabled', safeJSON(state));
  });

  test(`[${transport}] a disabled individual enrollment blocks one member of an enabled group → disabled`, T, async () => {
    const d = await newDevice(transport, 'blocked-member', oc.paths.disabled);
    await svc.putEnrollment({
      registrationId: d.id,
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: d.key, secondaryKey: randomKey() } },
      provisioningStatus: 'disabled',
    });
    const { done } = observedRegistration(transport, d.id, d.key);
    assertDisabled(await expectReject(done, 'blocked member'), d.id);
    const state = await svc.getRegistration(d.id);
    assert.equal(state.status, 'disabled', safeJSON(state));
  });
}

// assertDisabled: device-protocol.md §9, Node reports "disabled" as a
// SyntaxError carrying the body.
function assertDisabled(err, id) {
  assert.equal(err.name, 'SyntaxError', describeError(err));
  assert.equal(err.message, 'status is disabled', describeError(err));
  assert.equal(err.result && err.result.status, 'disabled', describeError(err));
  assert.equal(err.result.registrationState && err.result.registrationState.registrationId, id, describeError(err));
}

// The unreachable row cannot wait for Azure's retry schedule to run out
// (about 7 minutes): the device is seen polling while dpsd retries, the log
// shows the failed attempt, and then the webhook comes up and the retry
// assigns the device.
test('[http] unreachable webhook → retried on Azure\'s schedule: the device keeps polling "assigning"', T, async () => {
  const groupKey = await customGroup('outcome-unreachable', oc.paths.ok, 'enabled', oc.unreachable);
  const id = uid('dev-http-unreachable');
  const key = deriveKey(groupKey, id);
  const { done, seen } = observedRegistration('http', id, key);

  // Bounded wait until the device has been told "assigning" on a poll.
  const polledAssigning = () => seen.some((s) => s.method === 'queryOperationStatus' && s.status === 'assigning');
  for (let i = 0; i < 300 && !polledAssigning(); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(polledAssigning(), `the device polled and was told "assigning": ${safeJSON(seen)}`);
  assert.ok(seen.every((s) => s.status === 'assigning'), safeJSON(seen));

  const state = await svc.getRegistration(id);
  assert.equal(state.status, 'assigning', safeJSON(state));

  // The failed attempt is in the log before the next retry.
  let entry;
  for (let i = 0; i < 100; i++) {
    entry = await lastLogEntry(id).catch(() => undefined);
    if (entry && entry.attempts.length > 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(entry && entry.attempts.length > 0, `the allocation log shows the attempt: ${safeJSON(entry)}`);
  assert.equal(entry.outcome, 'inProgress', safeJSON(entry));
  assert.equal(entry.attempts[0].status, undefined, safeJSON(entry));
  assert.match(entry.attempts[0].error, /refused|connect|reach/i, safeJSON(entry));
  assert.ok(entry.attempts[0].retryAfterMs >= 1000, `a retry is scheduled: ${safeJSON(entry)}`);

  // The webhook comes up; a later retry assigns the device.
  await withTimeout(new Promise((resolve, reject) => {
    const req = http.request(oc.webhook + oc.paths.controlOpen, { method: 'POST' }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode < 300 ? resolve() : reject(new Error(`open unreachable: ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end();
  }), STEP_MS, 'open the unreachable webhook');
  remember(oc.paths.ok, id);
  const result = await done;
  assert.equal(result.status, 'assigned', safeJSON(result));
  assert.equal(result.assignedHub, oc.hub, safeJSON(result));
  const last = await lastLogEntry(id);
  assert.equal(last.outcome, 'assigned', safeJSON(last));
  assert.ok(last.attempts.length >= 2 && last.attempts.slice(0, -1).every((a) => a.error), safeJSON(last));
});
