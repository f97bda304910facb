'use strict';
// Bounded wrappers around the official device provisioning client
// (azure-iot-provisioning-device) with its HTTPS, MQTT, MQTT-over-
// WebSockets, AMQP and AMQP-over-WebSockets transports and symmetric-key
// security.

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { Mqtt, MqttWs } = require('azure-iot-provisioning-device-mqtt');
const { Amqp, AmqpWs } = require('azure-iot-provisioning-device-amqp');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { SharedAccessSignature } = require('azure-iot-common');
const { info, host, withTimeout } = require('./dpsd');

const REGISTER_MS = 60000;

const transports = {
  http: () => new Http(),
  mqtt: () => new Mqtt(),
  mqttws: () => new MqttWs(),
  amqp: () => new Amqp(),
  amqpws: () => new AmqpWs(),
};

// sasSecurityClient builds a security client object the SDK accepts (it only
// needs getRegistrationId and createSharedAccessSignature) whose token
// expires at expirySeconds (Unix time): used to send expired tokens.
function sasSecurityClient(registrationId, key, expirySeconds) {
  return {
    getRegistrationId(cb) {
      cb(null, registrationId);
    },
    createSharedAccessSignature(idScope, cb) {
      cb(null, SharedAccessSignature.create(`${idScope}/registrations/${registrationId}`, 'registration', key, expirySeconds));
    },
  };
}

const timings = [];

// register runs one registration with the official client and resolves the
// registrationState it returns, or rejects with the SDK's error. Bounded: the
// client has no overall deadline of its own, so it is cancelled after
// REGISTER_MS. opts: {payload, security, label}.
async function register(transportName, registrationId, key, opts = {}) {
  const make = transports[transportName];
  if (!make) throw new Error(`unknown transport ${transportName}`);
  const security = opts.security || new SymmetricKeySecurityClient(registrationId, key);
  const client = ProvisioningDeviceClient.create(host(), info().idScope, make(), security);
  if (opts.payload !== undefined) client.setProvisioningPayload(opts.payload);
  const started = process.hrtime.bigint();
  let outcome = 'ok';
  try {
    return await withTimeout(client.register(), REGISTER_MS, `${transportName} register ${registrationId}`,
      () => client.cancel(() => {}));
  } catch (err) {
    outcome = err && err.name ? err.name : 'error';
    throw err;
  } finally {
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const label = opts.label || 'register';
    timings.push({ transport: transportName, label, ms, outcome });
    // One line per registration, picked up by the Go driver (not asserted).
    console.log(`TIMING transport=${transportName} scenario=${JSON.stringify(label)} outcome=${outcome} ms=${ms.toFixed(1)}`);
  }
}

function timingSummary() {
  const by = new Map();
  for (const t of timings) {
    if (t.outcome !== 'ok') continue;
    const s = by.get(t.transport) || { n: 0, total: 0, max: 0, min: Infinity };
    s.n++;
    s.total += t.ms;
    s.max = Math.max(s.max, t.ms);
    s.min = Math.min(s.min, t.ms);
    by.set(t.transport, s);
  }
  return [...by.entries()].map(([transport, s]) =>
    `TIMING-SUMMARY transport=${transport} successful=${s.n} mean_ms=${(s.total / s.n).toFixed(1)} min_ms=${s.min.toFixed(1)} max_ms=${s.max.toFixed(1)}`);
}

module.exports = { register, sasSecurityClient, timingSummary, REGISTER_MS, transports };
