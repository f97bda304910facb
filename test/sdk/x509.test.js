'use strict';
// X.509 attestation with the official Node SDKs: azure-iot-security-x509
// X509Security with azure-iot-provisioning-device-http and -mqtt (MQTT and
// MQTT over WebSockets), then the
// provisioned device connecting to dpsd's built-in hub with the same
// certificate (azure-iot-device + azure-iot-device-mqtt, x509=true).
// Wire facts: device-protocol.md §6 and §12.6, service-api.md §6.4.
//
// Run by TestX509SDK (test/e2e/x509_test.go), which makes the test PKI with
// "dpsd cert", registers and verifies a CA with "dpsd certificate", and
// passes:
//   DPSD_X509_DIR   the PKI: root, intermediate (enrolled as a group), solo-root
//                   (individual devices), stranger-root (enrolled nowhere), and
//                   device certificates named by registration id:
//                   <name>-full-chain.cert.pem, <name>.key.pem, <name>.cert.pem
//   DPSD_X509_CA    name of the verified CA certificate (its devices chain to it
//                   through an intermediate that is not enrolled)
//   DPSD_HUB_ADDR   the built-in hub's IP address (its host name does not resolve)
//   DPSD_X509_TRANSPORTS  comma-separated provisioning transports to run
//                   (default http,mqtt,mqttws; TestX509SDKAMQP: amqp,amqpws)
//   (the device connects to it by that address: see connectHub)

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { Mqtt: ProvMqtt, MqttWs: ProvMqttWs } = require('azure-iot-provisioning-device-mqtt');
const { Amqp: ProvAmqp, AmqpWs: ProvAmqpWs } = require('azure-iot-provisioning-device-amqp');
const { X509Security } = require('azure-iot-security-x509');
const { Client, Message } = require('azure-iot-device');
const { Mqtt: DeviceMqtt } = require('azure-iot-device-mqtt');
const { Service } = require('./lib/service');
const {
  info, host, testHub, withTimeout, expectReject, describeError, dpsErrorBody, amqpError, safeJSON, closeIdleConnections,
} = require('./lib/dpsd');

const dir = process.env.DPSD_X509_DIR;
const caName = process.env.DPSD_X509_CA;
const hubAddr = process.env.DPSD_HUB_ADDR;
const skip = !dir || !caName || !hubAddr ? 'DPSD_X509_DIR, DPSD_X509_CA, DPSD_HUB_ADDR not set (run via go test ./test/e2e -run X509)' : false;

const T = { timeout: 180000, skip };
const STEP_MS = 30000;
const allTransports = {
  http: () => new Http(),
  mqtt: () => new ProvMqtt(),
  mqttws: () => new ProvMqttWs(),
  amqp: () => new ProvAmqp(),
  amqpws: () => new ProvAmqpWs(),
};
const transports = Object.fromEntries((process.env.DPSD_X509_TRANSPORTS || 'http,mqtt,mqttws').split(',').map((t) => [t, allTransports[t]]));
// The revoked device needs one transport only.
const revokedVia = transports.mqtt ? 'mqtt' : Object.keys(transports)[0];

function read(name) {
  return fs.readFileSync(path.join(dir, name), 'utf8');
}

// credentials of a device certificate made by "dpsd cert device": the full
// chain (leaf first) is what the device presents.
function credentials(regId) {
  return { cert: read(`${regId}-full-chain.cert.pem`), key: read(`${regId}.key.pem`) };
}

async function register(transport, regId) {
  const security = new X509Security(regId, credentials(regId));
  const client = ProvisioningDeviceClient.create(host(), info().idScope, transports[transport](), security);
  return withTimeout(client.register(), 60000, `${transport} register ${regId}`, () => client.cancel(() => {}));
}

function assertX509Result(result, regId, groupId, what) {
  assert.ok(result, `${what}: no result`);
  assert.equal(result.status, 'assigned', `${what}: ${safeJSON(result)}`);
  assert.equal(result.registrationId, regId, `${what}: ${safeJSON(result)}`);
  assert.equal(result.deviceId, regId, `${what}: ${safeJSON(result)}`);
  assert.equal(result.assignedHub, testHub(), `${what}: ${safeJSON(result)}`);
  const x = result.x509;
  assert.ok(x && x.certificateInfo, `${what}: x509.certificateInfo: ${safeJSON(result)}`);
  assert.match(x.certificateInfo.subjectName, new RegExp(`CN=${regId}`), `${what}: ${safeJSON(x)}`);
  assert.equal(x.enrollmentGroupId, groupId, `${what}: x509.enrollmentGroupId: ${safeJSON(result)}`);
  assert.equal(result.symmetricKey, undefined, `${what}: ${safeJSON(result)}`);
}

// connectHub opens a device client on the built-in hub with the device's
// certificate, sends one message and closes. The hub's host name does not
// resolve, and azure-iot-device 1.18.4 drops GatewayHostName from x509=true
// connection strings (Client.fromConnectionString builds the
// X509AuthenticationProvider from HostName and DeviceId only), so the
// device names the hub by its address, which the hub also answers to.
async function connectHub(regId, result) {
  assert.equal(result.assignedHub, testHub());
  const cs = `HostName=${hubAddr};DeviceId=${result.deviceId};x509=true`;
  const client = Client.fromConnectionString(cs, DeviceMqtt);
  client.setOptions(credentials(regId));
  try {
    await withTimeout(client.open(), STEP_MS, `hub open ${regId}`);
    const res = await withTimeout(client.sendEvent(new Message(JSON.stringify({ hello: regId }))), STEP_MS, `sendEvent ${regId}`);
    assert.equal(res.constructor.name, 'MessageEnqueued');
  } finally {
    await withTimeout(client.close(), STEP_MS, 'close').catch(() => {});
  }
}

// Over AMQP the Node transport passes on the rejected delivery's error
// (condition amqp:unauthorized-access, the DPS error JSON as description).
function assertUnauthorized(err, what) {
  const connack = /not authori[sz]ed/i.test(String(err && err.message));
  const amqp = amqpError(err);
  assert.ok(err && (err.name === 'UnauthorizedError' || connack || (amqp && amqp.condition === 'amqp:unauthorized-access')),
    `${what}: expected UnauthorizedError, got ${describeError(err)}`);
  if (!connack) {
    const body = dpsErrorBody(err);
    assert.ok(body, `${what}: no error body: ${describeError(err)}`);
    assert.equal(body.errorCode, 401002, `${what}: ${safeJSON(body)}`);
  }
}

const svc = new Service();
const staticAllocation = { allocationPolicy: 'static', iotHubs: [testHub()] };
let setupDone;

function setup() {
  if (!setupDone) {
    setupDone = (async () => {
      for (const t of Object.keys(transports)) {
        await svc.putEnrollment({
          registrationId: `x509-individual-${t}`,
          attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: read(`x509-individual-${t}.cert.pem`) } } } },
          ...staticAllocation,
        });
      }
      await svc.putGroup({
        enrollmentGroupId: 'x509-intermediate-group',
        attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: read('intermediate.cert.pem') } } } },
        ...staticAllocation,
      });
      await svc.putGroup({
        enrollmentGroupId: 'x509-ca-group',
        attestation: { type: 'x509', x509: { caReferences: { primary: caName } } },
        ...staticAllocation,
      });
      // One member of the intermediate's group is revoked by a disabled
      // individual enrollment holding its certificate.
      await svc.putEnrollment({
        registrationId: 'x509-revoked',
        attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: read('x509-revoked.cert.pem') } } } },
        provisioningStatus: 'disabled',
        ...staticAllocation,
      });
    })();
  }
  return setupDone;
}

after(() => closeIdleConnections());

for (const t of Object.keys(transports)) {
  test(`${t}: individual enrollment with the device certificate, then the hub`, T, async () => {
    await setup();
    const id = `x509-individual-${t}`;
    const result = await register(t, id);
    assertX509Result(result, id, undefined, id);
    const reg = await svc.getRegistration(id);
    assert.equal(reg.status, 'assigned', safeJSON(reg));
    await connectHub(id, result);
  });

  test(`${t}: device signed by an intermediate enrolled as a group, then the hub`, T, async () => {
    await setup();
    const id = `x509-inter-${t}`;
    const result = await register(t, id);
    assertX509Result(result, id, 'x509-intermediate-group', id);
    const reg = await svc.getRegistration(id);
    assert.equal(reg.status, 'assigned', safeJSON(reg));
    await connectHub(id, result);
  });

  test(`${t}: device under a verified CA (caReferences), then the hub`, T, async () => {
    await setup();
    const id = `x509-ca-${t}`;
    const result = await register(t, id);
    assertX509Result(result, id, 'x509-ca-group', id);
    await connectHub(id, result);
  });

  test(`${t}: a certificate no enrollment vouches for is refused`, T, async () => {
    await setup();
    const err = await expectReject(register(t, `x509-stranger-${t}`), 'stranger');
    assertUnauthorized(err, 'stranger');
    // Nothing was recorded for the refused device.
    await assert.rejects(svc.getRegistration(`x509-stranger-${t}`));
  });

  test(`${t}: registration id other than the certificate's CN is refused`, T, async () => {
    await setup();
    // X509Security sends the id it is given; the TLS certificate says x509-inter-<t>.
    const security = new X509Security(`x509-not-the-cn-${t}`, credentials(`x509-inter-${t}`));
    const client = ProvisioningDeviceClient.create(host(), info().idScope, transports[t](), security);
    const err = await expectReject(withTimeout(client.register(), 60000, 'register', () => client.cancel(() => {})), 'CN mismatch');
    assertUnauthorized(err, 'CN mismatch');
  });
}

test(`${revokedVia}: a disabled individual enrollment revokes one device of an enabled group`, T, async () => {
  await setup();
  const err = await expectReject(register(revokedVia, 'x509-revoked'), 'revoked device');
  // The Node client reports a "disabled" registration as
  // SyntaxError('status is disabled') carrying the body.
  assert.equal(err && err.message, 'status is disabled', describeError(err));
  assert.equal(err.result && err.result.status, 'disabled', describeError(err));
  const reg = await svc.getRegistration('x509-revoked');
  assert.equal(reg.status, 'disabled', safeJSON(reg));
});
