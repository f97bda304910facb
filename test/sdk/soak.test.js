'use strict';
// Registrations with the official device SDK while hostile clients load
// dpsd: run by TestSoakUnderHostileLoad (test/e2e/soak_test.go), which opens
// the hostile connections meanwhile. DPSD_SOAK_MS says how long to keep
// registering; every registration on every transport must be assigned.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { uid, deriveKey, testHub, safeJSON, closeIdleConnections } = require('./lib/dpsd');
const { register } = require('./lib/device');
const { Service } = require('./lib/service');

const SOAK_MS = Number(process.env.DPSD_SOAK_MS || 10000);
const MAX_REGISTRATIONS = 5000; // bounded whatever the duration
const TRANSPORTS = ['http', 'mqtt', 'mqttws', 'amqp', 'amqpws'];

after(() => closeIdleConnections());

test('every SDK registration succeeds during the soak', { timeout: SOAK_MS + 180000 }, async () => {
  const svc = new Service();
  const groupId = uid('soak');
  const group = await svc.putGroup({
    enrollmentGroupId: groupId,
    attestation: { type: 'symmetricKey' },
    allocationPolicy: 'static',
    iotHubs: [testHub()],
  });
  const key = group.attestation.symmetricKey.primaryKey;
  const deadline = Date.now() + SOAK_MS;
  const counts = Object.fromEntries(TRANSPORTS.map((t) => [t, 0]));
  let n = 0;
  // At least one registration per transport, then on until the deadline.
  while ((n < TRANSPORTS.length || Date.now() < deadline) && n < MAX_REGISTRATIONS) {
    const transport = TRANSPORTS[n % TRANSPORTS.length];
    const id = uid(`soak-${transport}`);
    n++;
    const result = await register(transport, id, deriveKey(key, id), { label: 'soak' });
    assert.equal(result.status, 'assigned', `${transport} ${id}: ${safeJSON(result)}`);
    assert.equal(result.assignedHub, testHub(), `${transport} ${id}: ${safeJSON(result)}`);
    counts[transport]++;
  }
  console.log(`SOAK registrations=${n} ${TRANSPORTS.map((t) => `${t}=${counts[t]}`).join(' ')}`);
  assert.ok(n >= TRANSPORTS.length, `only ${n} registrations in ${SOAK_MS} ms`);
});
