'use strict';
// Cloud-to-device messages through a dpsd built-in hub with the official
// Node SDKs: the azure-iothub service Client (over AMQP: $cbs put-token,
// /messages/devicebound) sends, an azure-iot-device client over MQTT
// receives and completes, and the service reads the delivery's feedback.
//
// Run by the Go test TestNodeSDKCloudToDevice (internal/hub/builtinhub),
// which serves a hub on a shared endpoint and passes:
//   DPSD_HUB_DEVICE_CONNECTION_STRING  HostName=<hub host>;DeviceId=…;SharedAccessKey=…;GatewayHostName=<ip:mqtt port>
//   DPSD_HUB_CONNECTION_STRING         the hub's iothubowner connection string, HostName=<hub host>:<amqp port>
//   DPSD_HUB_IP                        the address the hub's host name stands for
//   DPSD_HUB_HTTP_DEVICE_CONNECTION_STRING  a second device's, for the HTTP transport
//   DPSD_HUB_HTTPS_PORT                the port of the hub's HTTPS endpoint
//   DPSD_HUB_AMQP_DEVICE_CONNECTION_STRING  a third device's, GatewayHostName=<ip:amqp port>
//   NODE_EXTRA_CA_CERTS                the local CA
// The hub's host name does not resolve here, and the service client has
// no gateway option: this test code (only) looks the hub's names up as
// DPSD_HUB_IP.

const test = require('node:test');
const assert = require('node:assert');
const dns = require('node:dns');

const deviceCS = process.env.DPSD_HUB_DEVICE_CONNECTION_STRING;
const hubCS = process.env.DPSD_HUB_CONNECTION_STRING;
const hubIP = process.env.DPSD_HUB_IP;
const skip = !deviceCS || !hubCS || !hubIP ? 'DPSD_HUB_* not set (run via go test ./internal/hub/builtinhub -run NodeSDKCloudToDevice)' : false;

if (!skip) {
  const lookup = dns.lookup;
  dns.lookup = (host, opts, cb) => {
    if (typeof opts === 'function') { cb = opts; opts = {}; }
    if (/\.azure-devices\.internal$/i.test(host)) {
      return opts && opts.all ? cb(null, [{ address: hubIP, family: 4 }]) : cb(null, hubIP, 4);
    }
    return lookup(host, opts, cb);
  };
}

const { Client: DeviceClient } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Http } = require('azure-iot-device-http');
const { Amqp } = require('azure-iot-device-amqp');
const https = require('node:https');
const { Client: ServiceClient } = require('azure-iothub');
const { Message } = require('azure-iot-common');

const STEP_MS = 20000;

function within(promise, what, ms = STEP_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

test('azure-iothub Client.send reaches the device over MQTT', { skip }, async () => {
  const deviceId = /DeviceId=([^;]+)/.exec(deviceCS)[1];
  const device = DeviceClient.fromConnectionString(deviceCS, Mqtt);
  const service = ServiceClient.fromConnectionString(hubCS);
  try {
    const received = new Promise((resolve) => device.on('message', (msg) => {
      device.complete(msg, () => {});
      resolve(msg);
    }));
    await within(device.open(), 'device open');
    await within(service.open(), 'service Client.open (AMQP, $cbs put-token)');
    const feedbackReceiver = await within(new Promise((resolve, reject) =>
      service.getFeedbackReceiver((err, rcv) => (err ? reject(err) : resolve(rcv)))), 'getFeedbackReceiver');
    const feedback = new Promise((resolve) => feedbackReceiver.on('message', (msg) => {
      feedbackReceiver.complete(msg, () => {});
      resolve(JSON.parse(msg.data.toString()));
    }));
    const m = new Message('{"command":"toast"}');
    m.messageId = 'c2d-node-1';
    m.properties.add('priority', 'high');
    m.ack = 'full';
    await within(service.send(deviceId, m), 'service Client.send');
    const got = await within(received, 'the device receiving the message');
    assert.equal(got.data.toString(), '{"command":"toast"}');
    assert.equal(got.messageId, 'c2d-node-1');
    assert.equal(got.properties.getValue('priority'), 'high');

    // ack 'full': the delivery's outcome comes back as feedback.
    const records = await within(feedback, 'feedback');
    const rec = records.find((r) => r.originalMessageId === 'c2d-node-1');
    assert.ok(rec, `feedback for c2d-node-1 in ${JSON.stringify(records)}`);
    assert.equal(rec.deviceId, deviceId);
    assert.equal(rec.statusCode, 'Success');

    // A device that does not exist: the send is refused.
    await assert.rejects(within(service.send('no-such-device', new Message('x')), 'send to nobody'));
  } finally {
    await within(service.close(), 'service close').catch(() => {});
    await within(device.close(), 'device close').catch(() => {});
  }
});

test('a device over HTTPS (azure-iot-device-http) sends telemetry and receives, completes cloud-to-device messages', { skip }, async () => {
  const cs = process.env.DPSD_HUB_HTTP_DEVICE_CONNECTION_STRING;
  const deviceId = /DeviceId=([^;]+)/.exec(cs)[1];
  // The HTTP transport has no port option; an agent gives the test port.
  const agent = new https.Agent({ keepAlive: false });
  agent.defaultPort = Number(process.env.DPSD_HUB_HTTPS_PORT);
  const device = DeviceClient.fromConnectionString(cs, Http);
  const service = ServiceClient.fromConnectionString(hubCS);
  try {
    await within(device.setOptions({ http: { agent, receivePolicy: { interval: 1 } } }), 'device setOptions');
    await within(device.open(), 'device open');
    const t = new Message('{"temperature":22.5}');
    t.messageId = 'http-m-1';
    t.properties.add('source', 'http');
    await within(device.sendEvent(t), 'sendEvent over HTTPS');
    await within(device.sendEventBatch([new Message('b1'), new Message('b2')]), 'sendEventBatch over HTTPS');

    const received = new Promise((resolve) => device.on('message', (msg) => {
      device.complete(msg, () => resolve(msg));
    }));
    await within(service.open(), 'service open');
    const m = new Message('hello over https');
    m.messageId = 'c2d-http-1';
    m.properties.add('kind', 'greeting');
    await within(service.send(deviceId, m), 'service send');
    const got = await within(received, 'the device polling the message');
    assert.equal(got.data.toString(), 'hello over https');
    assert.equal(got.messageId, 'c2d-http-1');
    // The HTTP transport keeps the header's full name as the key.
    assert.equal(got.properties.getValue('iothub-app-kind'), 'greeting');
  } finally {
    device.removeAllListeners('message');
    await within(service.close(), 'service close').catch(() => {});
    await within(device.close(), 'device close').catch(() => {});
    agent.destroy();
  }
});

test('a device over AMQP (azure-iot-device-amqp) sends telemetry and receives cloud-to-device messages', { skip }, async () => {
  const cs = process.env.DPSD_HUB_AMQP_DEVICE_CONNECTION_STRING;
  const deviceId = /DeviceId=([^;]+)/.exec(cs)[1];
  const device = DeviceClient.fromConnectionString(cs, Amqp);
  const service = ServiceClient.fromConnectionString(hubCS);
  try {
    await within(device.open(), 'device open (AMQP, $cbs put-token with the device key)');
    const t = new Message('{"humidity":40}');
    t.messageId = 'amqp-m-1';
    t.properties.add('source', 'amqp');
    await within(device.sendEvent(t), 'sendEvent over AMQP');

    const received = new Promise((resolve) => device.on('message', (msg) => {
      device.complete(msg, () => resolve(msg));
    }));
    await within(service.open(), 'service open');
    const m = new Message('hello over amqp');
    m.messageId = 'c2d-amqp-1';
    m.properties.add('kind', 'greeting');
    await within(service.send(deviceId, m), 'service send');
    const got = await within(received, 'the device receiving the message over AMQP');
    assert.equal(got.data.toString(), 'hello over amqp');
    assert.equal(got.messageId, 'c2d-amqp-1');
    assert.equal(got.properties.getValue('kind'), 'greeting');
  } finally {
    device.removeAllListeners('message');
    await within(service.close(), 'service close').catch(() => {});
    await within(device.close(), 'device close').catch(() => {});
  }
});
