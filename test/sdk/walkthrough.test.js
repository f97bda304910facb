'use strict';
// The Contoso custom allocation walk-through (spec README, steps 5–7 and 9)
// with the official Node SDKs, run by TestContosoWalkthrough
// (test/e2e/walkthrough_test.go). The Go side starts dpsd, creates and
// links the two built-in hubs, runs the Contoso allocator and creates the
// enrollment group with the CLI; it passes what it set up in the info file
// (DPSD_INFO) under "walkthrough":
//   groupId, groupKey, payload, vectorKey, vectors {id: key},
//   hubs {name: {hostName, address, connectionString, httpsAddr, mqttAddr}},
//   http, mqtt, simulated: [{id, key, hub, tags, desired}],
//   stranger, strangerError, policy (true: the group's webhook URL is
//   policy:contoso, the in-process policy, not the allocator).
// Here: devices register over HTTPS and MQTT (azure-iot-provisioning-device),
// the service SDK reads their registration states, azure-iothub reads
// identities and twins from the hubs' REST API, and each device connects to
// its hub with azure-iot-device over MQTT and reads its twin.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const https = require('node:https');
const { Client } = require('azure-iot-device');
const { Mqtt: DeviceMqtt } = require('azure-iot-device-mqtt');
const { Registry } = require('azure-iothub');
const { info, deriveKey, describeError, safeJSON, withTimeout, expectReject, closeIdleConnections } = require('./lib/dpsd');
const { register } = require('./lib/device');
const { Service } = require('./lib/service');

const wt = (() => {
  try {
    return info().walkthrough;
  } catch (_) {
    return undefined;
  }
})();
const T = { skip: wt ? false : 'no walkthrough data in DPSD_INFO (run via go test ./test/e2e -run Walkthrough)', timeout: 180000 };
const STEP_MS = 20000;

const svc = wt ? new Service() : undefined;

after(() => closeIdleConnections());

function hubOf(d) {
  return wt.hubs[d.hub];
}

function otherHubOf(d) {
  const name = Object.keys(wt.hubs).find((n) => n !== d.hub);
  return wt.hubs[name];
}

// registries are azure-iothub Registry clients per hub. The Registry has
// no host or port option and the hubs' host names do not resolve here, so
// an agent looks every name up as the hub's own address (port 443, which
// the hub serves); test code only (iothub-surface.md §3).
const registries = new Map();
function registryOf(hub) {
  if (!registries.has(hub.name)) {
    const ip = hub.address;
    const agent = new https.Agent({
      lookup: (host, opts, cb) => (opts && opts.all ? cb(null, [{ address: ip, family: 4 }]) : cb(null, ip, 4)),
    });
    const reg = Registry.fromConnectionString(hub.connectionString);
    reg._restApiClient.setOptions({ http: { agent } });
    registries.set(hub.name, { reg, agent });
  }
  return registries.get(hub.name).reg;
}

after(() => {
  for (const { agent } of registries.values()) agent.destroy();
});

// assertProvisioned checks what the device SDK returned for a device.
function assertProvisioned(result, d, substatus) {
  const what = `${d.id}: ${safeJSON(result)}`;
  assert.equal(result.status, 'assigned', what);
  assert.equal(result.registrationId, d.id, what);
  assert.equal(result.deviceId, d.id, what);
  assert.equal(result.assignedHub, hubOf(d).hostName, `${d.id} must land in ${d.hub}: ${what}`);
  assert.equal(result.substatus, substatus, what);
}

// assertServiceState checks the registration state the service SDK reads.
async function assertServiceState(d) {
  const state = await svc.getRegistration(d.id);
  const what = `${d.id}: ${safeJSON(state)}`;
  assert.equal(state.status, 'assigned', what);
  assert.equal(state.assignedHub, hubOf(d).hostName, what);
  assert.equal(state.deviceId, d.id, what);
  assert.equal(state.symmetricKey && state.symmetricKey.enrollmentGroupId, wt.groupId, what);
}

test('step 5: device keys derived from the group key (the tutorial vectors and this run\'s keys)', T, () => {
  for (const [id, key] of Object.entries(wt.vectors)) {
    assert.equal(deriveKey(wt.vectorKey, id), key, `tutorial vector for ${id}`);
  }
  for (const d of [...wt.http, ...wt.mqtt, ...wt.simulated]) {
    assert.equal(d.key, deriveKey(wt.groupKey, d.id), `dpsd compute-device-key for ${d.id} agrees with the SDK-side derivation`);
  }
});

for (const transport of ['http', 'mqtt']) {
  test(`step 6 [${transport}]: the toaster and the heat pump provision into their hubs with the custom payload`, T, async () => {
    for (const d of wt[transport]) {
      const result = await register(transport, d.id, d.key, { payload: wt.payload, label: `walkthrough ${d.id}` });
      assertProvisioned(result, d, 'initialAssignment');
      await assertServiceState(d);
    }
  });
}

test('step 6: each hub holds its devices with the derived key and the webhook\'s initial twin (azure-iothub Registry/Twin)', T, async () => {
  for (const d of [...wt.http, ...wt.mqtt, ...wt.simulated]) {
    const reg = registryOf(hubOf(d));
    const { responseBody: dev } = await withTimeout(reg.get(d.id), STEP_MS, `Registry.get ${d.id}`);
    assert.equal(dev.deviceId, d.id);
    assert.equal(dev.status, 'enabled', `${d.id}: ${safeJSON(dev)}`);
    assert.equal(dev.authentication.symmetricKey.primaryKey, d.key, `${d.id}: the hub identity carries the derived key`);
    const { responseBody: twin } = await withTimeout(reg.getTwin(d.id), STEP_MS, `Registry.getTwin ${d.id}`);
    assert.deepEqual({ ...twin.tags }, d.tags, `${d.id}: twin tags`);
    for (const [k, v] of Object.entries(d.desired)) {
      assert.equal(twin.properties.desired[k], v, `${d.id}: desired ${k}: ${safeJSON(twin.properties.desired)}`);
    }
    // And it is not in the other hub.
    const err = await expectReject(withTimeout(registryOf(otherHubOf(d)).get(d.id), STEP_MS, `Registry.get ${d.id} in the other hub`),
      `${d.id} in ${otherHubOf(d).name}`);
    assert.equal(err.name, 'DeviceNotFoundError', describeError(err));
  }
});

// connectionString is what a device builds from its provisioning result:
// the assigned hub and device id, its key, and GatewayHostName, because
// the hub's host name does not resolve without a hosts-file line.
function connectionString(d) {
  const hub = hubOf(d);
  return `HostName=${hub.hostName};DeviceId=${d.id};SharedAccessKey=${d.key};GatewayHostName=${hub.address}`;
}

test('step 7: each device connects to its hub over MQTT, reads its twin and sees the webhook\'s desired properties', T, async () => {
  for (const d of [...wt.http, ...wt.mqtt, ...wt.simulated]) {
    const client = Client.fromConnectionString(connectionString(d), DeviceMqtt);
    try {
      await withTimeout(client.open(), STEP_MS, `open ${d.id}`);
      const twin = await withTimeout(client.getTwin(), STEP_MS, `getTwin ${d.id}`);
      for (const [k, v] of Object.entries(d.desired)) {
        assert.equal(twin.properties.desired[k], v, `${d.id}: desired ${k}: ${safeJSON(twin.properties.desired)}`);
      }
      await withTimeout(new Promise((resolve, reject) => {
        twin.properties.reported.update({ firmware: '12.0.2.5' }, (err) => (err ? reject(err) : resolve()));
      }), STEP_MS, `reported update ${d.id}`);
    } finally {
      await withTimeout(client.close(), STEP_MS, `close ${d.id}`).catch(() => {});
    }
  }
});

test('a re-registration over MQTT keeps the device in its hub with its data (reprovisionedToInitialAssignment)', T, async () => {
  for (const d of wt.http) {
    const result = await register('mqtt', d.id, d.key, { payload: wt.payload, label: `walkthrough again ${d.id}` });
    assertProvisioned(result, d, 'reprovisionedToInitialAssignment');
    const { responseBody: twin } = await withTimeout(registryOf(hubOf(d)).getTwin(d.id), STEP_MS, `Registry.getTwin ${d.id}`);
    assert.equal(twin.properties.reported.firmware, '12.0.2.5', `${d.id}: the reported properties survive a re-registration to the same hub: ${safeJSON(twin.properties)}`);
    for (const [k, v] of Object.entries(d.desired)) {
      assert.equal(twin.properties.desired[k], v, `${d.id}: desired ${k}`);
    }
  }
});

test('a registration id the webhook does not recognize fails with 400207', T, async () => {
  const id = wt.stranger;
  const err = await expectReject(register('http', id, deriveKey(wt.groupKey, id), { payload: wt.payload, label: 'walkthrough stranger' }), id);
  assert.equal(err.name, 'ProvisioningRegistrationFailedError', describeError(err));
  const state = err.result && err.result.registrationState;
  assert.ok(state, `the failure carries the registration state: ${describeError(err)}`);
  assert.equal(err.result.status, 'failed', describeError(err));
  assert.equal(state.errorCode, 400207, describeError(err));
  assert.match(state.errorMessage, wt.policy ? /allocation policy contoso refused the device/ : /status code: 400/, describeError(err));
  // The webhook's words never reach the device (its answer is whatever
  // the URL's target sent); they are in the allocation log.
  assert.doesNotMatch(state.errorMessage, /Unrecognized device registration/, describeError(err));

  const svcState = await svc.getRegistration(id);
  assert.equal(svcState.status, 'failed', safeJSON(svcState));
  assert.equal(svcState.errorCode, 400207, safeJSON(svcState));
  assert.equal(svcState.assignedHub, undefined, safeJSON(svcState));

  // The webhook's own words (or the policy's reason) are in the allocation log.
  const log = await allocationLog(id);
  const last = log.entries[log.entries.length - 1];
  assert.equal(last.outcome, 'failed', safeJSON(last));
  const reason = new RegExp(wt.strangerError.replace('.', '\\.'));
  if (wt.policy) {
    assert.equal(last.webhookUrl, 'policy:contoso', safeJSON(last));
    assert.match(last.attempts[0].error, reason, safeJSON(last));
  } else {
    assert.equal(last.attempts[0].status, 400, safeJSON(last));
    assert.match(last.attempts[0].webhookText, reason, safeJSON(last));
  }
});

// allocationLog reads GET /dpsd/registrations/{id}/allocationLog, signed
// like a service SDK request with the service connection string.
function allocationLog(id) {
  const { SharedAccessSignature } = require('azure-iot-common');
  const cs = Object.fromEntries(info().serviceConnectionString.split(';').map((kv) => {
    const i = kv.indexOf('=');
    return [kv.slice(0, i), kv.slice(i + 1)];
  }));
  const sas = SharedAccessSignature.create(cs.HostName, cs.SharedAccessKeyName, cs.SharedAccessKey,
    Math.floor(Date.now() / 1000) + 3600).toString();
  return withTimeout(new Promise((resolve, reject) => {
    const req = https.request({
      host: info().hostName,
      path: `/dpsd/registrations/${encodeURIComponent(id)}/allocationLog`,
      headers: { Authorization: sas, Accept: 'application/json' },
    }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { data += c; });
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`allocationLog ${id}: ${res.statusCode} ${data}`));
        else resolve(JSON.parse(data));
      });
    });
    req.on('error', reject);
    req.end();
  }), STEP_MS, `allocationLog ${id}`);
}
