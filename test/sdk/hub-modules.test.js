'use strict';
// Module identities and the bulk registry operation of a dpsd built-in hub,
// driven by the official Node SDKs: azure-iothub Registry (addModule,
// getModule, getModulesOnDevice, updateModuleTwin, getModuleTwin,
// removeModule, addDevices, updateDevices, removeDevices) and an
// azure-iot-device ModuleClient over MQTT (telemetry, twin) and over AMQP
// (telemetry).
//
// Run by the Go test TestNodeSDKModules (internal/hub/builtinhub/node_test.go),
// which starts a hub on a loopback address with one device and passes:
//   DPSD_HUB_CONNECTION_STRING  the hub's iothubowner connection string
//   DPSD_HUB_HTTPS_ADDR         <ip:port> of the hub's REST API
//   DPSD_HUB_MQTT_ADDR          <ip:port> of the hub's MQTT endpoint
//   DPSD_HUB_AMQP_ADDR          <ip:port> of the hub's AMQP endpoint
//   DPSD_HUB_DEVICE_ID          the device the modules are added to
//   NODE_EXTRA_CA_CERTS         the local CA

const test = require('node:test');
const assert = require('node:assert');
const https = require('node:https');
const { ModuleClient, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Amqp } = require('azure-iot-device-amqp');
const { Registry } = require('azure-iothub');

const hubCS = process.env.DPSD_HUB_CONNECTION_STRING;
const httpsAddr = process.env.DPSD_HUB_HTTPS_ADDR;
const mqttAddr = process.env.DPSD_HUB_MQTT_ADDR;
const amqpAddr = process.env.DPSD_HUB_AMQP_ADDR;
const deviceId = process.env.DPSD_HUB_DEVICE_ID;
const skip = !hubCS || !httpsAddr || !mqttAddr || !amqpAddr || !deviceId ? 'DPSD_HUB_* not set (run via go test ./internal/hub/builtinhub -run NodeSDKModules)' : false;

const STEP_MS = 20000;

function within(promise, what, ms = STEP_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

// registry reaches the hub's REST API, whose host name does not resolve
// and whose port is not 443.
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

const hostName = () => /HostName=([^;]+)/.exec(hubCS)[1];

test('Registry manages modules and a ModuleClient uses its twin and sends telemetry over MQTT', { skip }, async () => {
  const reg = registry();
  const added = (await within(reg.addModule({ deviceId, moduleId: 'filter' }), 'addModule')).responseBody;
  assert.strictEqual(added.moduleId, 'filter');
  const key = added.authentication.symmetricKey.primaryKey;
  assert.ok(key, 'the hub generates module keys');
  await within(reg.addModule({ deviceId, moduleId: 'spare' }), 'addModule spare');
  await assert.rejects(within(reg.addModule({ deviceId, moduleId: 'filter' }), 'addModule again'), (err) => err.name === 'ModuleAlreadyExistsOnDeviceError' || /409|already/i.test(String(err)));

  const got = (await within(reg.getModule(deviceId, 'filter'), 'getModule')).responseBody;
  assert.strictEqual(got.etag, added.etag);
  const list = (await within(reg.getModulesOnDevice(deviceId), 'getModulesOnDevice')).responseBody;
  assert.deepStrictEqual(list.map((m) => m.moduleId).sort(), ['filter', 'spare']);

  const twin0 = (await within(reg.getModuleTwin(deviceId, 'filter'), 'getModuleTwin')).responseBody;
  assert.strictEqual(twin0.moduleId, 'filter');
  await within(reg.updateModuleTwin(deviceId, 'filter', { properties: { desired: { threshold: 7 } } }, twin0.etag), 'updateModuleTwin');

  const cs = `HostName=${hostName()};DeviceId=${deviceId};ModuleId=filter;SharedAccessKey=${key};GatewayHostName=${mqttAddr}`;
  const client = ModuleClient.fromConnectionString(cs, Mqtt);
  try {
    await within(client.open(), 'module open');
    const twin = await within(client.getTwin(), 'module getTwin');
    assert.strictEqual(twin.properties.desired.threshold, 7);
    const desired = within(new Promise((resolve) => {
      twin.on('properties.desired', (d) => { if (d.threshold === 9) resolve(d); });
    }), 'desired update');
    await within(reg.updateModuleTwin(deviceId, 'filter', { properties: { desired: { threshold: 9 } } }, '*'), 'updateModuleTwin 2');
    await desired;
    await within(new Promise((resolve, reject) => twin.properties.reported.update({ filtered: 3 }, (err) => (err ? reject(err) : resolve()))), 'reported update');
    const msg = new Message(JSON.stringify({ filtered: 3 }));
    msg.messageId = 'module-m-1';
    await within(client.sendEvent(msg), 'module sendEvent');
  } finally {
    await client.close();
  }
  const twin1 = (await within(reg.getModuleTwin(deviceId, 'filter'), 'getModuleTwin after')).responseBody;
  assert.strictEqual(twin1.properties.reported.filtered, 3);
  assert.strictEqual(twin1.properties.desired.threshold, 9);

  await within(reg.removeModule(deviceId, 'spare'), 'removeModule');
  await assert.rejects(within(reg.getModule(deviceId, 'spare'), 'getModule removed'), (err) => /404|not/i.test(String(err)) || err.name === 'ModuleNotFoundError');
});

test('Registry bulk operations: addDevices, updateDevices, removeDevices', { skip }, async () => {
  const reg = registry();
  const ids = ['bulk-1', 'bulk-2', 'bulk-3'];
  const add = (await within(reg.addDevices(ids.map((id) => ({ deviceId: id }))), 'addDevices')).responseBody;
  assert.strictEqual(add.isSuccessful, true, JSON.stringify(add));
  const again = (await within(reg.addDevices([{ deviceId: 'bulk-1' }, { deviceId: 'bulk-4' }]), 'addDevices again')).responseBody;
  assert.strictEqual(again.isSuccessful, false);
  assert.deepStrictEqual(again.errors.map((e) => [e.deviceId, e.errorCode]), [['bulk-1', 'DeviceAlreadyExists']]);

  const upd = (await within(reg.updateDevices(ids.map((id) => ({ deviceId: id, status: 'disabled' })), true), 'updateDevices')).responseBody;
  assert.strictEqual(upd.isSuccessful, true, JSON.stringify(upd));
  const d2 = (await within(reg.get('bulk-2'), 'get')).responseBody;
  assert.strictEqual(d2.status, 'disabled');
  const stale = (await within(reg.updateDevices([{ deviceId: 'bulk-2', status: 'enabled', etag: 'stale' }], false), 'updateDevices by etag')).responseBody;
  assert.strictEqual(stale.isSuccessful, false);

  const rm = (await within(reg.removeDevices([...ids, 'bulk-4'].map((id) => ({ deviceId: id })), true), 'removeDevices')).responseBody;
  assert.strictEqual(rm.isSuccessful, true, JSON.stringify(rm));
  await assert.rejects(within(reg.get('bulk-1'), 'get removed'));
});

test('a ModuleClient sends telemetry over AMQP', { skip }, async () => {
  const reg = registry();
  const added = (await within(reg.addModule({ deviceId, moduleId: 'amqpmod' }), 'addModule')).responseBody;
  const key = added.authentication.symmetricKey.primaryKey;
  const cs = `HostName=${hostName()};DeviceId=${deviceId};ModuleId=amqpmod;SharedAccessKey=${key};GatewayHostName=${amqpAddr}`;
  const client = ModuleClient.fromConnectionString(cs, Amqp);
  try {
    await within(client.open(), 'module open over AMQP');
    const msg = new Message(JSON.stringify({ over: 'amqp' }));
    msg.messageId = 'module-amqp-1';
    await within(client.sendEvent(msg), 'module sendEvent over AMQP');
  } finally {
    await client.close();
  }
  // A wrong key is refused.
  const bad = ModuleClient.fromConnectionString(cs.replace(key, Buffer.alloc(32, 7).toString('base64')), Amqp);
  try {
    await assert.rejects(within(bad.open().then(() => bad.sendEvent(new Message('x'))), 'open with a wrong key'));
  } finally {
    await bad.close().catch(() => {});
  }
});
