'use strict';
// Two dpsd built-in hubs on one address, reached over AMQP and AMQP over
// WebSockets the way a user does without DNS for the hubs' names: the
// device connection string keeps the hub's host name and adds
// GatewayHostName=<dpsd's IP address>. azure-iot-device-amqp then dials
// the IP (no TLS server name; over WebSockets Host is the IP too), names
// the IP in its open frame, and only its $cbs put-token (audience
// {hubHostName}/devices/{id}) says which hub. The same device id exists in
// both hubs, with different keys: a connection given to the wrong hub
// fails to authenticate, and a message sent through one hub must reach
// the device connected to that hub. An Event Hubs consumer with
// Endpoint=sb://<IP>/ then reads each hub's telemetry.
//
// Run by TestNodeSDKHubsOnOneAddress (test/e2e/hubaddr_test.go), which
// starts "dpsd serve" on the standard ports of a loopback address,
// creates the hubs on its shared listeners and passes:
//   DPSD_HUB_A_CONNECTION_STRING, DPSD_HUB_B_CONNECTION_STRING  the hubs' iothubowner connection strings
//   DPSD_HUB_IP                                                 dpsd's address
//   DPSD_HUB_DEVICE_ID                                          the device id to create in both hubs
//   NODE_EXTRA_CA_CERTS                                         the local CA
// The service clients (Registry, Client) have no gateway option: this test
// code (only) looks the hubs' names up as DPSD_HUB_IP for them. The
// devices never look a name up.

const test = require('node:test');
const assert = require('node:assert/strict');
const dns = require('node:dns');
const crypto = require('node:crypto');

const hubCSs = [process.env.DPSD_HUB_A_CONNECTION_STRING, process.env.DPSD_HUB_B_CONNECTION_STRING];
const hubIP = process.env.DPSD_HUB_IP;
const deviceId = process.env.DPSD_HUB_DEVICE_ID;
const skip = !hubCSs[0] || !hubCSs[1] || !hubIP || !deviceId ? 'DPSD_HUB_* not set (run via go test ./test/e2e -run NodeSDKHubsOnOneAddress)' : false;
const hostOf = (cs) => /HostName=([^;]+)/.exec(cs)[1];

const looked = [];
if (!skip) {
  const hosts = hubCSs.map((cs) => hostOf(cs).toLowerCase());
  const lookup = dns.lookup;
  dns.lookup = (host, opts, cb) => {
    if (typeof opts === 'function') { cb = opts; opts = {}; }
    looked.push(host);
    if (hosts.includes(host.toLowerCase())) {
      return opts && opts.all ? cb(null, [{ address: hubIP, family: 4 }]) : cb(null, hubIP, 4);
    }
    return lookup(host, opts, cb);
  };
}

const { Client: DeviceClient } = require('azure-iot-device');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');
const { Client: ServiceClient, Registry } = require('azure-iothub');
const { Message } = require('azure-iot-common');
const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');

const STEP_MS = 20000;

function within(promise, what, ms = STEP_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

// hubs[i]: the hub's host name, its device's connection string by IP and
// its service client.
const hubs = [];

test('the same device id in both hubs, each with its own key', { skip }, async () => {
  for (const cs of hubCSs) {
    const registry = Registry.fromConnectionString(cs);
    const key = crypto.randomBytes(32).toString('base64');
    await within(registry.create({ deviceId, status: 'enabled', authentication: { symmetricKey: { primaryKey: key, secondaryKey: crypto.randomBytes(32).toString('base64') } } }), `Registry.create on ${hostOf(cs)}`);
    const service = ServiceClient.fromConnectionString(cs);
    await within(service.open(), `service Client.open on ${hostOf(cs)}`);
    hubs.push({
      host: hostOf(cs),
      deviceCS: `HostName=${hostOf(cs)};DeviceId=${deviceId};SharedAccessKey=${key};GatewayHostName=${hubIP}`,
      service,
    });
  }
});

for (const tr of [{ name: 'Amqp', ctor: Amqp }, { name: 'AmqpWs', ctor: AmqpWs }]) {
  test(`azure-iot-device over ${tr.name} by IP address reaches each hub`, { skip, timeout: 120000 }, async (t) => {
    assert.equal(hubs.length, 2, 'the devices were created');
    // Both hubs' devices connected at once, on one address.
    const devices = hubs.map((h) => DeviceClient.fromConnectionString(h.deviceCS, tr.ctor));
    try {
      const before = looked.length;
      for (const [i, d] of devices.entries()) {
        await within(d.open(), `open over ${tr.name} to ${hubs[i].host} by ${hubIP}`);
      }
      assert.deepEqual(looked.slice(before), [], 'the devices dial the IP address, looking no name up');

      await t.test('telemetry', async () => {
        for (const [i, d] of devices.entries()) {
          const m = new Message(JSON.stringify({ hub: hubs[i].host, transport: tr.name }));
          m.messageId = `${tr.name}-to-${i}`;
          await within(d.sendEvent(m), `sendEvent to ${hubs[i].host}`);
        }
      });

      await t.test('cloud-to-device messages reach the device of the hub that sent them', async () => {
        const got = devices.map((d) => new Promise((resolve) => {
          d.on('message', (msg) => d.complete(msg, () => resolve(msg.data.toString())));
        }));
        for (const [i, h] of hubs.entries()) {
          const m = new Message(`from ${h.host} over ${tr.name}`);
          m.messageId = `${tr.name}-c2d-${i}`;
          await within(h.service.send(deviceId, m), `Client.send on ${h.host}`);
        }
        for (const [i, h] of hubs.entries()) {
          assert.equal(await within(got[i], `the message of ${h.host}`), `from ${h.host} over ${tr.name}`);
        }
      });
    } finally {
      for (const d of devices) {
        await within(d.close(), 'device close').catch(() => {});
      }
    }
  });
}

// The Event Hubs-compatible endpoint by the address too: the token's
// entity (the hub's name) says which hub's telemetry.
test('@azure/event-hubs by IP address reads each hub\'s own telemetry', { skip, timeout: 120000 }, async () => {
  for (const [i, cs] of hubCSs.entries()) {
    const key = /SharedAccessKey=([^;]+)/.exec(cs)[1];
    const name = hostOf(cs).split('.')[0];
    const ehCS = `Endpoint=sb://${hubIP}/;SharedAccessKeyName=iothubowner;SharedAccessKey=${key};EntityPath=${name}`;
    const client = new EventHubConsumerClient('$Default', ehCS, { retryOptions: { maxRetries: 1, retryDelayInMs: 200, timeoutInMs: 15000 } });
    const before = looked.length;
    let sub;
    try {
      const ids = await within(new Promise((resolve, reject) => {
        const got = [];
        sub = client.subscribe({
          processEvents: async (batch) => {
            for (const e of batch) got.push(e.messageId);
            if (got.length >= 2) resolve(got);
          },
          processError: async (err) => { reject(err); },
        }, { startPosition: earliestEventPosition, maxWaitTimeInSeconds: 1, maxBatchSize: 10 });
      }), `the telemetry of ${name} by ${hubIP}`, 60000);
      assert.deepEqual(ids.sort(), [`Amqp-to-${i}`, `AmqpWs-to-${i}`]);
    } finally {
      if (sub) await sub.close();
      await client.close();
    }
    assert.deepEqual(looked.slice(before), [], 'the consumer dials the IP address, looking no name up');
  }
});

test('close the service clients', { skip }, async () => {
  for (const h of hubs) {
    await within(h.service.close(), 'service Client.close').catch(() => {});
  }
});
