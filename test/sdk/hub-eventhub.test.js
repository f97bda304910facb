'use strict';
// The Event Hubs-compatible endpoint of a dpsd built-in hub with the
// official @azure/event-hubs consumer: a device (azure-iot-device over
// MQTT) sends telemetry, an EventHubConsumerClient reads it — from a
// subscription started before the device sent, and from the earliest
// event — with the hub's properties ($management READ) on the way.
//
// Run by the Go test TestNodeEventHubsConsumer (internal/hub/builtinhub),
// which serves a hub on a shared endpoint and passes:
//   DPSD_HUB_DEVICE_CONNECTION_STRING    HostName=<hub host>;DeviceId=…;SharedAccessKey=…;GatewayHostName=<ip:mqtt port>
//   DPSD_HUB_EVENTHUB_CONNECTION_STRING  Endpoint=sb://<hub host>:<amqp port>/;SharedAccessKeyName=service;…;EntityPath=<hub name>
//   DPSD_HUB_SERVICE_CONNECTION_STRING   HostName=<hub host>;SharedAccessKeyName=service;SharedAccessKey=…
//   DPSD_HUB_AMQP_PORT                   the port of the hubs' AMQP listener
//   DPSD_HUB_IP                          the address the hub's host name stands for
//   NODE_EXTRA_CA_CERTS                  the local CA
// The hub's host name does not resolve here: this test code (only) looks
// the hub's names up as DPSD_HUB_IP.

const test = require('node:test');
const assert = require('node:assert');
const dns = require('node:dns');

const deviceCS = process.env.DPSD_HUB_DEVICE_CONNECTION_STRING;
const ehCS = process.env.DPSD_HUB_EVENTHUB_CONNECTION_STRING;
const hubIP = process.env.DPSD_HUB_IP;
const skip = !deviceCS || !ehCS || !hubIP ? 'DPSD_HUB_* not set (run via go test ./internal/hub/builtinhub -run NodeEventHubsConsumer)' : false;

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

const { Client: DeviceClient, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { EventHubConsumerClient, earliestEventPosition, latestEventPosition } = require('@azure/event-hubs');
const { Connection, ReceiverEvents } = require('rhea-promise');
const crypto = require('node:crypto');

const STEP_MS = 30000;
const deviceId = deviceCS ? /DeviceId=([^;]+)/.exec(deviceCS)[1] : '';
const hubName = ehCS ? /EntityPath=([^;]+)/.exec(ehCS)[1] : '';

function within(promise, what, ms = STEP_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

// A short retry policy: a refusal must fail the test, not be retried for minutes.
const clientOptions = { retryOptions: { maxRetries: 1, retryDelayInMs: 200, timeoutInMs: 15000 } };

async function sendTelemetry(body, messageId, props) {
  const device = DeviceClient.fromConnectionString(deviceCS, Mqtt);
  try {
    await within(device.open(), 'device open');
    const m = new Message(body);
    m.messageId = messageId;
    m.contentType = 'application/json';
    m.contentEncoding = 'utf-8';
    for (const [k, v] of Object.entries(props)) m.properties.add(k, v);
    await within(device.sendEvent(m), 'device sendEvent over MQTT');
  } finally {
    await within(device.close(), 'device close').catch(() => {});
  }
}

// collect subscribes and resolves with the first n events of the device;
// ready resolves once every partition's receiver is attached (its first
// batch, empty or not, came in).
function collect(client, startPosition, n) {
  const events = [];
  const started = new Set();
  let resolveReady, resolveDone, rejectDone;
  const ready = new Promise((r) => { resolveReady = r; });
  const done = new Promise((r, j) => { resolveDone = r; rejectDone = j; });
  const sub = client.subscribe({
    processEvents: async (batch, ctx) => {
      started.add(ctx.partitionId);
      if (started.size === 4) resolveReady();
      for (const e of batch) {
        if (e.systemProperties['iothub-connection-device-id'] === deviceId) events.push({ ...e, partitionId: ctx.partitionId });
      }
      if (events.length >= n) resolveDone(events);
    },
    processError: async (err) => { rejectDone(err); },
  }, { startPosition, maxWaitTimeInSeconds: 1, maxBatchSize: 10 });
  return { sub, ready, done };
}

test('getEventHubProperties and getPartitionProperties answer from $management', { skip }, async () => {
  const client = new EventHubConsumerClient('$Default', ehCS, clientOptions);
  try {
    const props = await within(client.getEventHubProperties(), 'getEventHubProperties');
    assert.equal(props.name, hubName);
    assert.deepEqual(props.partitionIds, ['0', '1', '2', '3']);
    assert.ok(props.createdOn instanceof Date && !isNaN(props.createdOn), `createdOn ${props.createdOn}`);
    assert.deepEqual(await within(client.getPartitionIds(), 'getPartitionIds'), ['0', '1', '2', '3']);
    for (const id of props.partitionIds) {
      const p = await within(client.getPartitionProperties(id), 'getPartitionProperties ' + id);
      assert.equal(p.partitionId, id);
      assert.equal(p.eventHubName, hubName);
      assert.equal(p.isEmpty, true, `partition ${id} of a new hub: ${JSON.stringify(p)}`);
      assert.equal(p.lastEnqueuedSequenceNumber, -1);
    }
    await assert.rejects(within(client.getPartitionProperties('9'), 'getPartitionProperties 9'));
  } finally {
    await client.close();
  }
});

test('a subscription started before the device sends receives its telemetry', { skip }, async () => {
  const client = new EventHubConsumerClient('$Default', ehCS, clientOptions);
  try {
    const { sub, ready, done } = collect(client, latestEventPosition, 1);
    try {
      await within(ready, 'the four partition receivers attaching');
      await sendTelemetry('{"temperature":21.5}', 'eh-m-1', { alert: 'false', source: 'mqtt' });
      const [e] = await within(done, 'the event reaching the subscription');
      assert.deepEqual(e.body, { temperature: 21.5 });
      assert.equal(e.messageId, 'eh-m-1');
      assert.equal(e.contentType, 'application/json');
      assert.equal(e.properties.alert, 'false');
      assert.equal(e.properties.source, 'mqtt');
      assert.equal(e.systemProperties['iothub-connection-device-id'], deviceId);
      assert.equal(e.systemProperties['iothub-message-source'], 'Telemetry');
      assert.equal(e.systemProperties.contentEncoding, 'utf-8');
      assert.ok(e.enqueuedTimeUtc instanceof Date && Math.abs(Date.now() - e.enqueuedTimeUtc.getTime()) < 10 * 60000, `enqueuedTimeUtc ${e.enqueuedTimeUtc}`);
      assert.equal(e.sequenceNumber, 0);
      assert.equal(typeof e.offset, 'string');
    } finally {
      await sub.close();
    }
  } finally {
    await client.close();
  }
});

test('a consumer from the earliest event reads what was sent before it started, in order', { skip }, async () => {
  await sendTelemetry('{"temperature":22}', 'eh-m-2', { alert: 'true' });
  const client = new EventHubConsumerClient('$Default', ehCS, clientOptions);
  try {
    const { sub, done } = collect(client, earliestEventPosition, 2);
    let events;
    try {
      events = await within(done, 'both events from the earliest position');
    } finally {
      await sub.close();
    }
    assert.deepEqual(events.map((e) => e.messageId), ['eh-m-1', 'eh-m-2']);
    assert.deepEqual(events.map((e) => e.sequenceNumber), [0, 1]);
    assert.equal(events[0].partitionId, events[1].partitionId);
    assert.ok(Number(events[1].offset) > Number(events[0].offset), `offsets ${events[0].offset}, ${events[1].offset}`);
    assert.deepEqual(events[1].body, { temperature: 22 });
    assert.equal(events[1].properties.alert, 'true');

    // The partition's properties now tell of the two events.
    const p = await within(client.getPartitionProperties(events[0].partitionId), 'getPartitionProperties');
    assert.equal(p.isEmpty, false);
    assert.equal(p.beginningSequenceNumber, 0);
    assert.equal(p.lastEnqueuedSequenceNumber, 1);
    assert.equal(p.lastEnqueuedOffset, events[1].offset);
    assert.equal(p.lastEnqueuedOnUtc.getTime(), events[1].enqueuedTimeUtc.getTime());

    // From a sequence number: only the second.
    const one = collect(client, { sequenceNumber: 0 }, 1);
    try {
      const [e] = await within(one.done, 'the event after sequence number 0');
      assert.equal(e.messageId, 'eh-m-2');
    } finally {
      await one.sub.close();
    }
  } finally {
    await client.close();
  }
});

test('a wrong key is refused', { skip }, async () => {
  const bad = ehCS.replace(/SharedAccessKey=[^;]+/, 'SharedAccessKey=' + Buffer.alloc(32, 7).toString('base64'));
  const client = new EventHubConsumerClient('$Default', bad, { retryOptions: { maxRetries: 0, timeoutInMs: 10000 } });
  try {
    await assert.rejects(within(client.getPartitionIds(), 'getPartitionIds with a wrong key'), (err) => {
      assert.match(String(err && (err.code || err.name)), /Unauthorized|unauthorized/i, String(err));
      return true;
    });
  } finally {
    await client.close();
  }
});

// eventHubsFromIotHub asks the hub for its endpoint as the Azure samples
// do: SASL PLAIN with a service token for {host}/messages/events, then a
// receiver on messages/events that the hub refuses with a redirect.
async function eventHubsFromIotHub(iotCS, port) {
  const cs = Object.fromEntries(iotCS.split(';').map((p) => { const i = p.indexOf('='); return [p.slice(0, i), p.slice(i + 1)]; }));
  const sr = encodeURIComponent(`${cs.HostName}/messages/events`);
  const se = Math.ceil(Date.now() / 1000) + 300;
  const sig = crypto.createHmac('sha256', Buffer.from(cs.SharedAccessKey, 'base64')).update(`${sr}\n${se}`).digest('base64');
  const token = `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}&skn=${cs.SharedAccessKeyName}`;
  const hubName = cs.HostName.split('.')[0];
  const connection = new Connection({
    transport: 'tls', host: cs.HostName, hostname: cs.HostName, port, reconnect: false,
    username: `${cs.SharedAccessKeyName}@sas.root.${hubName}`, password: token,
  });
  await connection.open();
  try {
    // As the samples do: the receiver opens, then its error is awaited.
    const receiver = await within(connection.createReceiver({
      source: { address: `amqps://${cs.HostName}/messages/events/$management` },
    }), 'createReceiver on messages/events');
    const redirected = new Promise((resolve, reject) => {
      receiver.on(ReceiverEvents.receiverError, (ctx) => {
        const err = ctx.receiver && ctx.receiver.error;
        if (err && err.condition === 'amqp:link:redirect' && err.info) resolve(err.info);
        else reject(err || new Error('receiver error without an error'));
      });
    });
    const info = await within(redirected, 'the redirect');
    const m = /:\d+\/(.*)\/\$management$/i.exec(info.address);
    assert.ok(m, `redirect address ${info.address}`);
    return { info, cs: `Endpoint=sb://${info.hostname}/;EntityPath=${m[1]};SharedAccessKeyName=${cs.SharedAccessKeyName};SharedAccessKey=${cs.SharedAccessKey}` };
  } finally {
    await connection.close().catch(() => {});
  }
}

test('an IoT hub connection string leads to the endpoint by the amqp:link:redirect of messages/events', { skip }, async () => {
  const port = Number(process.env.DPSD_HUB_AMQP_PORT);
  const { info, cs } = await eventHubsFromIotHub(process.env.DPSD_HUB_SERVICE_CONNECTION_STRING, port);
  assert.equal(info.port, port);
  const host = /Endpoint=sb:\/\/([^:/]+)/.exec(ehCS)[1];
  assert.match(cs, new RegExp(`^Endpoint=sb://${host.replace(/\./g, '\\.')}/;EntityPath=${hubName};SharedAccessKeyName=service;`));
  // The sample's connection string has no port: the endpoint address gives it.
  const client = new EventHubConsumerClient('$Default', cs, { ...clientOptions, customEndpointAddress: `sb://${info.hostname}:${info.port}` });
  try {
    const props = await within(client.getEventHubProperties(), 'getEventHubProperties through the redirect');
    assert.equal(props.name, hubName);
    const p = await within(client.getPartitionProperties(props.partitionIds[0]), 'getPartitionProperties');
    assert.equal(p.eventHubName, hubName);
  } finally {
    await client.close();
  }
});
