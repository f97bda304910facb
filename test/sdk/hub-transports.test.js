'use strict';
// The IoT Hub device data plane of a dpsd built-in hub over every transport
// of the official Node device SDK (azure-iot-device with Mqtt, MqttWs,
// Http, Amqp, AmqpWs), driven by the service SDK (azure-iothub: Registry
// CRUD and updateTwin, Client.send with feedback, invokeDeviceMethod); a
// ModuleClient's twin and direct methods over Mqtt, MqttWs, Amqp and AmqpWs
// (Registry.updateModuleTwin, invokeDeviceMethod on the module); and the
// hub's Event Hubs-compatible endpoint read by @azure/event-hubs over
// WebSockets (wss://{host}:443/$servicebus/websocket) and over AMQP over
// TLS (5671).
//
// Run by TestNodeSDKHubTransports (test/e2e/hubsdk_test.go), which starts
// "dpsd serve" on the standard ports of a loopback address and creates a
// built-in hub on the node's shared listeners, and by
// TestNodeSDKHubTransportsOwnAddress, which creates one with an address of
// its own (hub create --address) listening on the standard ports itself.
// Both pass:
//   DPSD_HUB_CONNECTION_STRING           the hub's iothubowner connection string
//   DPSD_HUB_EVENTHUB_CONNECTION_STRING  its Event Hubs-compatible endpoint's
//   DPSD_HUB_IP                          the address the hub's host name stands for
//   NODE_EXTRA_CA_CERTS                  the local CA
// The hub's host name does not resolve on a test machine: this test code
// (only) looks it up as DPSD_HUB_IP, as one hosts-file line would.

const test = require('node:test');
const assert = require('node:assert/strict');
const dns = require('node:dns');
const crypto = require('node:crypto');

const hubCS = process.env.DPSD_HUB_CONNECTION_STRING;
const ehCS = process.env.DPSD_HUB_EVENTHUB_CONNECTION_STRING;
const hubIP = process.env.DPSD_HUB_IP;
const skip = !hubCS || !ehCS || !hubIP ? 'DPSD_HUB_* not set (run via go test ./test/e2e -run NodeSDKHubTransports)' : false;
const hubHost = hubCS ? /HostName=([^;]+)/.exec(hubCS)[1] : '';

if (!skip) {
  const lookup = dns.lookup;
  dns.lookup = (host, opts, cb) => {
    if (typeof opts === 'function') { cb = opts; opts = {}; }
    if (host.toLowerCase() === hubHost.toLowerCase()) {
      return opts && opts.all ? cb(null, [{ address: hubIP, family: 4 }]) : cb(null, hubIP, 4);
    }
    return lookup(host, opts, cb);
  };
}

const { Client: DeviceClient, ModuleClient } = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Http } = require('azure-iot-device-http');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');
const { Client: ServiceClient, Registry } = require('azure-iothub');
const { Message } = require('azure-iot-common');
const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');
// The WebSocket constructor @azure/event-hubs takes in Node: the ws
// package, which azure-iothub depends on (pinned by the lockfile).
const WebSocket = require('ws');

const STEP_MS = 20000;

function within(promise, what, ms = STEP_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

const transports = [
  { name: 'Mqtt', ctor: Mqtt, settle: ['complete'], twin: true, methods: true },
  { name: 'MqttWs', ctor: MqttWs, settle: ['complete'], twin: true, methods: true },
  { name: 'Http', ctor: Http, settle: ['complete', 'reject', 'abandon'], twin: false, methods: false },
  { name: 'Amqp', ctor: Amqp, settle: ['complete', 'reject', 'abandon'], twin: true, methods: true },
  { name: 'AmqpWs', ctor: AmqpWs, settle: ['complete', 'reject', 'abandon'], twin: true, methods: true },
];

const registry = skip ? undefined : Registry.fromConnectionString(hubCS);
let service;
let feedbackRecords = [];
let feedbackWaiters = [];

function key() { return crypto.randomBytes(32).toString('base64'); }

async function createDevice(deviceId) {
  const k = key();
  await within(registry.create({ deviceId, status: 'enabled', authentication: { symmetricKey: { primaryKey: k, secondaryKey: key() } } }), `Registry.create ${deviceId}`);
  return `HostName=${hubHost};DeviceId=${deviceId};SharedAccessKey=${k}`;
}

// feedbackFor waits for the feedback record of message id.
function feedbackFor(id) {
  const found = feedbackRecords.find((r) => r.originalMessageId === id);
  if (found) return Promise.resolve(found);
  return new Promise((resolve) => feedbackWaiters.push({ id, resolve }));
}

test('azure-iothub Registry: create, get, update, list, delete', { skip }, async () => {
  const id = 'sdk-registry-' + Date.now();
  await createDevice(id);
  const { responseBody: got } = await within(registry.get(id), 'Registry.get');
  assert.equal(got.deviceId, id);
  assert.equal(got.status, 'enabled');
  got.status = 'disabled';
  const { responseBody: updated } = await within(registry.update(got), 'Registry.update');
  assert.equal(updated.status, 'disabled');
  const { responseBody: list } = await within(registry.list(), 'Registry.list');
  assert.ok(list.some((d) => d.deviceId === id), `Registry.list holds ${id}`);
  await within(registry.delete(id), 'Registry.delete');
  await assert.rejects(within(registry.get(id), 'Registry.get after delete'), (err) => err.name === 'DeviceNotFoundError' || /404|not found/i.test(String(err)));
});

test('azure-iothub Client opens over AMQP and receives feedback', { skip }, async () => {
  service = ServiceClient.fromConnectionString(hubCS);
  await within(service.open(), 'service Client.open');
  const rcv = await within(new Promise((resolve, reject) =>
    service.getFeedbackReceiver((err, r) => (err ? reject(err) : resolve(r)))), 'getFeedbackReceiver');
  rcv.on('message', (msg) => {
    const recs = JSON.parse(msg.data.toString());
    rcv.complete(msg, () => {});
    for (const r of recs) {
      feedbackRecords.push(r);
      feedbackWaiters = feedbackWaiters.filter((w) => (w.id === r.originalMessageId ? (w.resolve(r), false) : true));
    }
  });
});

for (const tr of transports) {
  test(`azure-iot-device over ${tr.name}: telemetry, cloud-to-device, twin, methods`, { skip, timeout: 180000 }, async (t) => {
    const deviceId = `sdk-${tr.name.toLowerCase()}-${Date.now()}`;
    const cs = await createDevice(deviceId);
    const device = DeviceClient.fromConnectionString(cs, tr.ctor);
    try {
      if (tr.name === 'Http') {
        await within(device.setOptions({ http: { receivePolicy: { interval: 1 } } }), 'setOptions');
      }
      await within(device.open(), `open over ${tr.name}`);

      await t.test('telemetry', async () => {
        const m = new Message(JSON.stringify({ transport: tr.name, t: 21.5 }));
        m.messageId = `${deviceId}-tel`;
        m.properties.add('transport', tr.name);
        await within(device.sendEvent(m), 'sendEvent');
      });

      await t.test(`cloud-to-device: ${tr.settle.join(', ')}`, async () => {
        // Each message says how the device settles it; "abandon" is
        // abandoned once and completed when it comes again.
        const seen = {};
        const done = {};
        const settled = new Promise((resolve) => {
          device.on('message', (msg) => {
            const how = msg.data.toString();
            seen[how] = (seen[how] || 0) + 1;
            let op = how;
            if (how === 'abandon' && seen[how] > 1) op = 'complete';
            device[op](msg, (err) => {
              assert.ifError(err);
              if (op !== 'abandon') done[how] = true;
              if (tr.settle.every((s) => done[s])) resolve();
            });
          });
        });
        for (const how of tr.settle) {
          const m = new Message(how);
          m.messageId = `${deviceId}-${how}`;
          m.ack = 'full';
          m.properties.add('how', how);
          await within(service.send(deviceId, m), `Client.send ${how}`);
        }
        await within(settled, 'the device settling every message', 60000);
        const want = { complete: 'Success', reject: 'Rejected', abandon: 'Success' };
        for (const how of tr.settle) {
          const rec = await within(feedbackFor(`${deviceId}-${how}`), `feedback of ${how}`);
          assert.equal(rec.statusCode, want[how], `feedback of ${how}: ${JSON.stringify(rec)}`);
          assert.equal(rec.deviceId, deviceId);
        }
        if (tr.settle.includes('abandon')) {
          assert.equal(seen.abandon, 2, 'an abandoned message comes again');
        }
        device.removeAllListeners('message');
      });

      if (tr.twin) {
        await t.test('twin: get, reported patch, desired update from Registry.updateTwin', async () => {
          const twin = await within(device.getTwin(), 'getTwin');
          assert.equal(typeof twin.properties.desired.$version, 'number');
          await within(new Promise((resolve, reject) =>
            twin.properties.reported.update({ transport: tr.name, firmware: '1.2.3' }, (err) => (err ? reject(err) : resolve()))), 'reported update');
          const { responseBody: st } = await within(registry.getTwin(deviceId), 'Registry.getTwin');
          assert.equal(st.properties.reported.firmware, '1.2.3');
          assert.equal(st.properties.reported.transport, tr.name);
          const desired = new Promise((resolve) => twin.on('properties.desired', (delta) => {
            if (delta.color) resolve(delta);
          }));
          // The SDK subscribes when the listener is added: give it a
          // moment, then patch until the update arrives.
          let got;
          for (let i = 0; i < 10 && !got; i++) {
            await within(registry.updateTwin(deviceId, { properties: { desired: { color: `blue-${i}` } } }, '*'), 'Registry.updateTwin');
            got = await Promise.race([desired, new Promise((r) => setTimeout(r, 1000))]);
          }
          assert.ok(got, 'the desired update reached the device');
          assert.match(got.color, /^blue-/);
          assert.equal(typeof got.$version, 'number');
        });
      }

      if (tr.methods) {
        await t.test('direct method through invokeDeviceMethod', async () => {
          device.onDeviceMethod('reboot', (req, res) => {
            res.send(200, { rebooted: true, delay: req.payload && req.payload.delay }, () => {});
          });
          let result;
          for (let i = 0; i < 10 && !result; i++) {
            try {
              result = await within(service.invokeDeviceMethod(deviceId, { methodName: 'reboot', payload: { delay: 5 }, responseTimeoutInSeconds: 15 }), 'invokeDeviceMethod');
            } catch (err) {
              // The subscription may not be in place yet: try again.
              if (i === 9) throw err;
              await new Promise((r) => setTimeout(r, 500));
            }
          }
          assert.equal(result.result.status, 200);
          assert.deepEqual(result.result.payload, { rebooted: true, delay: 5 });
        });
      }
    } finally {
      device.removeAllListeners('message');
      await within(device.close(), 'device close').catch(() => {});
    }
  });
}

// retry calls fn until it resolves, up to n times: a subscription the SDK
// makes when a listener is added may not be in place at once.
async function retry(n, what, fn) {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (err) {
      if (i >= n) throw new Error(`${what}: ${err}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

for (const tr of transports.filter((x) => x.twin && x.methods)) {
  test(`azure-iot-device ModuleClient over ${tr.name}: twin, desired update from Registry.updateModuleTwin, methods`, { skip, timeout: 120000 }, async (t) => {
    const deviceId = `sdk-mod-${tr.name.toLowerCase()}-${Date.now()}`;
    await createDevice(deviceId);
    const { responseBody: added } = await within(registry.addModule({ deviceId, moduleId: 'filter' }), 'Registry.addModule');
    const cs = `HostName=${hubHost};DeviceId=${deviceId};ModuleId=filter;SharedAccessKey=${added.authentication.symmetricKey.primaryKey}`;
    const { responseBody: before } = await within(registry.getModuleTwin(deviceId, 'filter'), 'Registry.getModuleTwin');
    await within(registry.updateModuleTwin(deviceId, 'filter', { properties: { desired: { threshold: 7 } } }, before.etag), 'Registry.updateModuleTwin');
    const client = ModuleClient.fromConnectionString(cs, tr.ctor);
    try {
      await within(client.open(), `module open over ${tr.name}`);

      await t.test('twin: get, reported patch, desired update', async () => {
        const twin = await within(client.getTwin(), 'module getTwin');
        assert.equal(twin.properties.desired.threshold, 7);
        await within(new Promise((resolve, reject) =>
          twin.properties.reported.update({ transport: tr.name, filtered: 3 }, (err) => (err ? reject(err) : resolve()))), 'module reported update');
        const { responseBody: st } = await within(registry.getModuleTwin(deviceId, 'filter'), 'Registry.getModuleTwin after');
        assert.equal(st.properties.reported.filtered, 3);
        assert.equal(st.properties.reported.transport, tr.name);
        const { responseBody: dev } = await within(registry.getTwin(deviceId), 'Registry.getTwin');
        assert.equal(dev.properties.reported.filtered, undefined, 'the module\'s patch stays off the device twin');
        const desired = new Promise((resolve) => twin.on('properties.desired', (delta) => {
          if (delta.color) resolve(delta);
        }));
        let got;
        for (let i = 0; i < 10 && !got; i++) {
          await within(registry.updateModuleTwin(deviceId, 'filter', { properties: { desired: { color: `green-${i}` } } }, '*'), 'Registry.updateModuleTwin');
          got = await Promise.race([desired, new Promise((r) => setTimeout(r, 1000))]);
        }
        assert.ok(got, 'the desired update reached the module');
        assert.match(got.color, /^green-/);
        assert.equal(typeof got.$version, 'number');
      });

      await t.test('direct method through invokeDeviceMethod(deviceId, moduleId)', async () => {
        client.onMethod('reset', (req, res) => {
          res.send(200, { reset: true, level: req.payload && req.payload.level }, () => {});
        });
        const result = await retry(10, 'invokeDeviceMethod on the module', () =>
          within(service.invokeDeviceMethod(deviceId, 'filter', { methodName: 'reset', payload: { level: 2 }, responseTimeoutInSeconds: 15 }), 'invokeDeviceMethod'));
        assert.equal(result.result.status, 200);
        assert.deepEqual(result.result.payload, { reset: true, level: 2 });
        // The device has no method handler of its own: the call is the module's.
        await assert.rejects(within(service.invokeDeviceMethod(deviceId, { methodName: 'reset', responseTimeoutInSeconds: 5 }), 'invokeDeviceMethod on the device'));
      });
    } finally {
      await within(client.close(), 'module close').catch(() => {});
    }
  });
}

// The Event Hubs-compatible endpoint over WebSockets and over AMQP over
// TLS, each reading an event a device sent over AMQP on the same transport.
// The connection string names no port: over WebSockets the client goes to
// 443, the hub's HTTPS port, over TLS to 5671, as they would to Azure.
for (const ep of [
  { name: 'WebSockets', device: AmqpWs, tag: 'ehws', options: { webSocketOptions: { webSocket: WebSocket } } },
  { name: 'AMQP over TLS', device: Amqp, tag: 'ehtls', options: {} },
]) {
  test(`@azure/event-hubs EventHubConsumerClient over ${ep.name} reads telemetry a device sent`, { skip, timeout: 120000 }, async () => {
    const deviceId = `sdk-${ep.tag}-${Date.now()}`;
    const device = DeviceClient.fromConnectionString(await createDevice(deviceId), ep.device);
    try {
      await within(device.open(), `device open over ${ep.device.name}`);
      const m = new Message(JSON.stringify({ over: ep.tag, t: 19.5 }));
      m.messageId = `${deviceId}-eh`;
      m.properties.add('source', ep.tag);
      await within(device.sendEvent(m), 'sendEvent');
    } finally {
      await within(device.close(), 'device close').catch(() => {});
    }
    assert.doesNotMatch(ehCS, /Endpoint=sb:\/\/[^/]*:\d+\//);
    const client = new EventHubConsumerClient('$Default', ehCS, {
      ...ep.options,
      retryOptions: { maxRetries: 1, retryDelayInMs: 200, timeoutInMs: 15000 },
    });
    try {
      const props = await within(client.getEventHubProperties(), `getEventHubProperties over ${ep.name}`);
      assert.equal(props.name, /EntityPath=([^;]+)/.exec(ehCS)[1]);
      let sub;
      const event = new Promise((resolve, reject) => {
        sub = client.subscribe({
          processEvents: async (batch) => {
            const e = batch.find((x) => x.systemProperties['iothub-connection-device-id'] === deviceId);
            if (e) resolve(e);
          },
          processError: async (err) => reject(err),
        }, { startPosition: earliestEventPosition, maxWaitTimeInSeconds: 1, maxBatchSize: 50 });
      });
      try {
        const e = await within(event, `the event over ${ep.name}`, 60000);
        assert.equal(e.messageId, `${deviceId}-eh`);
        assert.deepEqual(e.body, { over: ep.tag, t: 19.5 });
        assert.equal(e.properties.source, ep.tag);
      } finally {
        await sub.close();
      }
    } finally {
      await client.close();
    }
  });
}

test('close the service client', { skip }, async () => {
  if (service) await within(service.close(), 'service close').catch(() => {});
});
