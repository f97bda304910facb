'use strict';
// A device provisioned into a dpsd built-in IoT hub, driven by the official
// Node SDKs: azure-iot-device + azure-iot-device-mqtt on the device side,
// azure-iothub Registry/Twin on the service side (iothub-surface.md).
//
// Run by the Go test TestNodeSDKAgainstBuiltinHub (internal/hub/builtinhub/node_test.go),
// which starts a hub on a loopback address and passes:
//   DPSD_HUB_DEVICE_CONNECTION_STRING  HostName=<hub host>;DeviceId=…;SharedAccessKey=…;GatewayHostName=<ip:mqtt port>
//   DPSD_HUB_CONNECTION_STRING         the hub's iothubowner connection string
//   DPSD_HUB_HTTPS_ADDR                <ip:port> of the hub's REST API
//   NODE_EXTRA_CA_CERTS                the local CA
// The hub's host name does not resolve: the device dials GatewayHostName,
// the Registry an agent that looks the host name up as DPSD_HUB_HTTPS_ADDR.

const test = require('node:test');
const assert = require('node:assert');
const https = require('node:https');
const { Client, Message, SharedAccessKeyAuthenticationProvider } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Registry } = require('azure-iothub');

const deviceCS = process.env.DPSD_HUB_DEVICE_CONNECTION_STRING;
const hubCS = process.env.DPSD_HUB_CONNECTION_STRING;
const httpsAddr = process.env.DPSD_HUB_HTTPS_ADDR;
const skip = !deviceCS || !hubCS || !httpsAddr ? 'DPSD_HUB_* not set (run via go test ./iothub -run NodeSDK)' : false;

const STEP_MS = 20000;

// within bounds every SDK call: a hub that never answers fails the test
// instead of hanging it.
function within(promise, what, ms = STEP_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

// registry returns an azure-iothub Registry that reaches the hub's REST
// API although its host name does not resolve and its port is not 443.
function registry() {
  const [ip, port] = httpsAddr.split(':');
  const agent = new https.Agent({
    lookup: (host, opts, cb) => (opts && opts.all ? cb(null, [{ address: ip, family: 4 }]) : cb(null, ip, 4)),
  });
  agent.defaultPort = Number(port); // the constructor forces 443
  const reg = Registry.fromConnectionString(hubCS);
  reg._restApiClient.setOptions({ http: { agent } });
  return reg;
}

function deviceIdOf(cs) {
  return /DeviceId=([^;]+)/.exec(cs)[1];
}

// nextDesired resolves with the first desired-properties event that
// satisfies pred.
function nextDesired(twin, pred, what) {
  return within(new Promise((resolve) => {
    const handler = (delta) => {
      if (pred(delta)) {
        twin.removeListener('properties.desired', handler);
        resolve(delta);
      }
    };
    twin.on('properties.desired', handler);
  }), what);
}

test('device connects to the built-in hub, uses its twin and sends telemetry', { skip }, async () => {
  const id = deviceIdOf(deviceCS);
  const reg = registry();
  // Short-lived tokens make the SDK renew its token during the test: it
  // reconnects with clean session off and does not subscribe again.
  const auth = SharedAccessKeyAuthenticationProvider.fromConnectionString(deviceCS, 8, 4);
  const client = Client.fromAuthenticationProvider(auth, Mqtt);
  try {
    await within(client.open(), 'open');

    const twin = await within(client.getTwin(), 'getTwin');
    assert.strictEqual(twin.properties.desired.state, 'ready');
    assert.strictEqual(twin.properties.desired.darknessSetting, 'medium');
    assert.ok(twin.properties.desired.$version >= 2);

    await within(new Promise((resolve, reject) => {
      twin.properties.reported.update({ firmware: '12.0.2.5', status: { ok: true } }, (err) => (err ? reject(err) : resolve()));
    }), 'reported update');

    // A desired change made with the service SDK reaches the device.
    const pushed = nextDesired(twin, (d) => d.state === 'toasting', 'desired push');
    const { responseBody: svcTwin } = await within(reg.getTwin(id), 'Registry.getTwin');
    assert.strictEqual(svcTwin.tags.deviceType, 'toaster');
    assert.strictEqual(svcTwin.properties.reported.firmware, '12.0.2.5');
    await within(svcTwin.update({ properties: { desired: { state: 'toasting' } } }), 'Twin.update');
    await pushed;

    const { responseBody: dev } = await within(reg.get(id), 'Registry.get');
    assert.strictEqual(dev.connectionState, 'Connected');

    const msg = new Message(JSON.stringify({ temp: 21.5 }));
    msg.messageId = 'node-m-1';
    msg.contentType = 'application/json';
    msg.contentEncoding = 'utf-8';
    msg.properties.add('alert', 'false');
    const res = await within(client.sendEvent(msg), 'sendEvent');
    assert.strictEqual(res.constructor.name, 'MessageEnqueued');

    // After the token renewal the session still delivers desired changes.
    await new Promise((r) => setTimeout(r, 6000));
    const again = nextDesired(twin, (d) => d.state === 'done', 'desired push after token renewal');
    const { responseBody: t2 } = await within(reg.getTwin(id), 'Registry.getTwin');
    await within(t2.update({ properties: { desired: { state: 'done' } } }), 'Twin.update');
    await again;
    const twin2 = await within(client.getTwin(), 'getTwin after renewal');
    assert.strictEqual(twin2.properties.desired.state, 'done');
  } finally {
    await within(client.close(), 'close').catch(() => {});
  }
});

test('Registry create, conflict, update, delete against the built-in hub', { skip }, async () => {
  const reg = registry();
  const id = 'node-registry-dev';
  const { responseBody: created } = await within(reg.create({ deviceId: id }), 'create');
  assert.strictEqual(created.deviceId, id);
  assert.ok(created.authentication.symmetricKey.primaryKey, 'hub generates keys');
  await assert.rejects(within(reg.create({ deviceId: id }), 'create again'), (err) => err.name === 'DeviceAlreadyExistsError');
  const { responseBody: updated } = await within(reg.update({ deviceId: id, status: 'disabled' }), 'update');
  assert.strictEqual(updated.status, 'disabled');
  assert.strictEqual(updated.authentication.symmetricKey.primaryKey, created.authentication.symmetricKey.primaryKey);
  await within(reg.delete(id), 'delete');
  await assert.rejects(within(reg.get(id), 'get deleted'), (err) => err.name === 'DeviceNotFoundError');
});

test('a wrong device key is refused', { skip }, async () => {
  const bad = deviceCS.replace(/SharedAccessKey=[^;]+/, 'SharedAccessKey=AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=');
  const client = Client.fromConnectionString(bad, Mqtt);
  await assert.rejects(within(client.open(), 'open with a wrong key'), (err) => err.name === 'UnauthorizedError');
  await within(client.close(), 'close').catch(() => {});
});
