'use strict';
// The official provisioning service SDK (azure-iot-provisioning-service)
// against a running dpsd: enrollments, enrollment groups, attestation
// lookups, queries with paging, bulk operations, registration states, auth.
// Wire facts: the service API notes (service-api.md) (§ numbers below).

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { ConnectionString } = require('azure-iot-common');
const { Service } = require('./lib/service');
const {
  info, testHub, uid, randomKey, expectReject, describeError, httpStatus, assertDpsError,
  safeJSON, closeIdleConnections,
} = require('./lib/dpsd');

const T = { timeout: 120000 };
const svc = new Service();

after(closeIdleConnections);

function symmetricEnrollment(id, extra = {}) {
  return { registrationId: id, attestation: { type: 'symmetricKey' }, ...extra };
}

function symmetricGroup(id, extra = {}) {
  return { enrollmentGroupId: id, attestation: { type: 'symmetricKey' }, ...extra };
}

function assertGeneratedKeys(attestation, what) {
  assert.equal(attestation && attestation.type, 'symmetricKey', `${what}: attestation ${safeJSON(attestation)}`);
  const sk = attestation.symmetricKey;
  assert.ok(sk && sk.primaryKey && sk.secondaryKey, `${what}: generated keys must be returned: ${safeJSON(attestation)}`);
  // §4.3: generated keys are 64 random bytes, base64.
  assert.equal(Buffer.from(sk.primaryKey, 'base64').length, 64, `${what}: primary key length`);
  assert.equal(Buffer.from(sk.secondaryKey, 'base64').length, 64, `${what}: secondary key length`);
  assert.notEqual(sk.primaryKey, sk.secondaryKey, `${what}: primary and secondary keys differ`);
}

function assertKeysHidden(attestation, what) {
  const sk = attestation && attestation.symmetricKey;
  assert.ok(!sk || (!sk.primaryKey && !sk.secondaryKey), `${what}: symmetric keys must not be returned: ${safeJSON(attestation)}`);
}

function assertStatus(err, status, errorName) {
  assert.equal(httpStatus(err), status, `expected HTTP ${status}, got ${describeError(err)}`);
  if (errorName) assert.equal(err.name, errorName, `expected ${errorName}, got ${describeError(err)}`);
}

// ---------------------------------------------------------------------------
// Individual enrollments

test('individual enrollment: create generates keys, returned only by PUT', T, async () => {
  const id = uid('sdk-ind');
  const created = await svc.putEnrollment(symmetricEnrollment(id));
  assert.equal(created.registrationId, id);
  assertGeneratedKeys(created.attestation, 'PUT response');
  assert.equal(typeof created.etag, 'string', `etag: ${safeJSON(created)}`);
  assert.ok(created.etag.length > 0);
  assert.equal(created.provisioningStatus, 'enabled', 'provisioningStatus defaults to enabled');
  assert.ok(created.createdDateTimeUtc, 'createdDateTimeUtc');
  assert.ok(created.lastUpdatedDateTimeUtc, 'lastUpdatedDateTimeUtc');

  const got = await svc.getEnrollment(id);
  assert.equal(got.registrationId, id);
  assert.equal(got.attestation.type, 'symmetricKey');
  assertKeysHidden(got.attestation, 'GET');
  assert.equal(got.etag, created.etag, 'GET returns the etag of the last write');

  const att = await svc.enrollmentAttestation(id);
  assert.equal(att.type, 'symmetricKey');
  assert.equal(att.symmetricKey.primaryKey, created.attestation.symmetricKey.primaryKey, 'attestation mechanism returns the keys');
  assert.equal(att.symmetricKey.secondaryKey, created.attestation.symmetricKey.secondaryKey);

  await svc.deleteEnrollment(id);
});

test('individual enrollment: update with the returned object (etag -> If-Match)', T, async () => {
  const id = uid('sdk-upd');
  const created = await svc.putEnrollment(symmetricEnrollment(id, {
    initialTwin: { tags: { site: 'lab' }, properties: { desired: { interval: 30 } } },
  }));
  const keys = created.attestation.symmetricKey;

  created.provisioningStatus = 'disabled';
  created.initialTwin.tags.site = 'plant';
  const updated = await svc.putEnrollment(created);
  assert.equal(updated.provisioningStatus, 'disabled');
  assert.equal(updated.initialTwin.tags.site, 'plant');
  assert.notEqual(updated.etag, created.etag, 'a write must change the etag');
  assert.equal(updated.createdDateTimeUtc, created.createdDateTimeUtc, 'createdDateTimeUtc is kept on update');

  const got = await svc.getEnrollment(id);
  assert.equal(got.provisioningStatus, 'disabled');
  assert.deepEqual(got.initialTwin.tags, { site: 'plant' });
  assert.equal(got.etag, updated.etag);

  // The keys sent back by the update are kept.
  const att = await svc.enrollmentAttestation(id);
  assert.equal(att.symmetricKey.primaryKey, keys.primaryKey);

  await svc.deleteEnrollment(updated);
});

test('individual enrollment: update of the GET object (keys omitted) keeps the stored keys', T, async () => {
  // service-api.md §2.5: the CLI's GET -> modify -> PUT flow; keys must not be regenerated.
  const id = uid('sdk-keep');
  const created = await svc.putEnrollment(symmetricEnrollment(id));
  const got = await svc.getEnrollment(id);
  got.provisioningStatus = 'disabled';
  await svc.putEnrollment(got);
  const att = await svc.enrollmentAttestation(id);
  assert.equal(att.symmetricKey.primaryKey, created.attestation.symmetricKey.primaryKey);
  assert.equal(att.symmetricKey.secondaryKey, created.attestation.symmetricKey.secondaryKey);
  await svc.deleteEnrollment(id);
});

test('individual enrollment: stale etag -> 412 InvalidEtagError (PUT and DELETE)', T, async () => {
  const id = uid('sdk-etag');
  const created = await svc.putEnrollment(symmetricEnrollment(id));
  const stale = JSON.parse(JSON.stringify(created));
  created.provisioningStatus = 'disabled';
  const updated = await svc.putEnrollment(created);

  stale.initialTwin = { tags: { stale: true }, properties: { desired: {} } };
  const err = await expectReject(svc.putEnrollment(stale), 'PUT with a stale etag');
  assertStatus(err, 412, 'InvalidEtagError');
  assertDpsError(err, 412);

  const delErr = await expectReject(svc.deleteEnrollment(id, stale.etag), 'DELETE with a stale etag');
  assertStatus(delErr, 412, 'InvalidEtagError');

  const got = await svc.getEnrollment(id);
  assert.equal(got.etag, updated.etag, 'rejected writes change nothing');
  assert.equal(got.initialTwin && got.initialTwin.tags && got.initialTwin.tags.stale, undefined);

  await svc.deleteEnrollment(id, updated.etag);
});

test('individual enrollment: create of an existing id without etag -> 409', T, async () => {
  const id = uid('sdk-dup');
  await svc.putEnrollment(symmetricEnrollment(id));
  const err = await expectReject(svc.putEnrollment(symmetricEnrollment(id)), 'second create without etag');
  assertStatus(err, 409, 'DeviceAlreadyExistsError');
  assertDpsError(err, 409);
  await svc.deleteEnrollment(id);
});

test('individual enrollment: delete, then get/delete/attestation -> 404 Not found', T, async () => {
  const id = uid('sdk-del');
  const created = await svc.putEnrollment(symmetricEnrollment(id));
  await svc.deleteEnrollment(created);

  const err = await expectReject(svc.getEnrollment(id), 'GET of a deleted enrollment');
  assertStatus(err, 404);
  assert.equal(err.message, 'Not found');
  assertDpsError(err, 404, 404201);

  const delErr = await expectReject(svc.deleteEnrollment(id), 'DELETE of a deleted enrollment');
  assertStatus(delErr, 404);

  const attErr = await expectReject(svc.enrollmentAttestation(id), 'attestation of a deleted enrollment');
  assertStatus(attErr, 404);
});

test('individual enrollment: supplied keys, deviceId, twin, capabilities, policies round-trip', T, async () => {
  const id = uid('sdk-full');
  const primaryKey = randomKey(32);
  const secondaryKey = randomKey(32);
  const hub = testHub();
  const sent = {
    registrationId: id,
    deviceId: `${id}-device`,
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, secondaryKey } },
    provisioningStatus: 'enabled',
    capabilities: { iotEdge: true },
    initialTwin: { tags: { floor: 3, kind: 'sensor' }, properties: { desired: { interval: 15, mode: 'eco' } } },
    reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: false },
    allocationPolicy: 'static',
    iotHubs: [hub],
    optionalDeviceInformation: { model: 'x1' },
  };
  const created = await svc.putEnrollment(sent);
  assert.equal(created.attestation.symmetricKey.primaryKey, primaryKey, 'supplied keys are kept');
  assert.equal(created.attestation.symmetricKey.secondaryKey, secondaryKey);

  const got = await svc.getEnrollment(id);
  assert.equal(got.deviceId, sent.deviceId);
  assert.deepEqual(got.capabilities, { iotEdge: true });
  assert.deepEqual(got.initialTwin.tags, sent.initialTwin.tags);
  assert.deepEqual(got.initialTwin.properties.desired, sent.initialTwin.properties.desired);
  assert.deepEqual(got.reprovisionPolicy, sent.reprovisionPolicy);
  assert.equal(got.allocationPolicy, 'static');
  assert.deepEqual(got.iotHubs, [hub]);
  assert.deepEqual(got.optionalDeviceInformation, { model: 'x1' });

  const att = await svc.enrollmentAttestation(id);
  assert.equal(att.symmetricKey.primaryKey, primaryKey);
  await svc.deleteEnrollment(id);
});

test('individual enrollment: ids are looked up case-insensitively', T, async () => {
  const id = uid('SDK-Case');
  const mixed = `${id}-MiXeD`;
  await svc.putEnrollment(symmetricEnrollment(mixed));
  const got = await svc.getEnrollment(mixed.toLowerCase());
  assert.equal(got.registrationId.toLowerCase(), mixed.toLowerCase());
  await svc.deleteEnrollment(mixed.toUpperCase());
  const err = await expectReject(svc.getEnrollment(mixed), 'GET after delete');
  assertStatus(err, 404);
});

test('individual enrollment: invalid requests -> 400 ArgumentError', T, async () => {
  // custom allocation without a definition (service-api.md §3, 400004)
  const custom = symmetricEnrollment(uid('sdk-bad'), { allocationPolicy: 'custom' });
  const err = await expectReject(svc.putEnrollment(custom), 'custom allocation without customAllocationDefinition');
  assertStatus(err, 400, 'ArgumentError');
  assertDpsError(err, 400, 400004);

  // a key that is not base64 of 16..64 bytes
  const badKey = symmetricEnrollment(uid('sdk-bad'), {
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: 'c2hvcnQ=', secondaryKey: 'c2hvcnQ=' } },
  });
  const keyErr = await expectReject(svc.putEnrollment(badKey), 'symmetric key of 5 bytes');
  assertStatus(keyErr, 400, 'ArgumentError');
  assertDpsError(keyErr, 400);

  // an invalid registration id
  const badId = await expectReject(svc.putEnrollment(symmetricEnrollment('bad id with spaces!')), 'invalid registration id');
  assertStatus(badId, 400, 'ArgumentError');
});

// ---------------------------------------------------------------------------
// Enrollment groups

test('enrollment group: create, get, update, stale etag, conflict, delete', T, async () => {
  const id = uid('sdk-grp');
  const created = await svc.putGroup(symmetricGroup(id, {
    allocationPolicy: 'static',
    iotHubs: [testHub()],
    initialTwin: { tags: { fleet: 'a' }, properties: { desired: {} } },
  }));
  assert.equal(created.enrollmentGroupId, id);
  assertGeneratedKeys(created.attestation, 'group PUT response');
  assert.ok(created.etag, 'etag');
  assert.equal(created.provisioningStatus, 'enabled');

  const got = await svc.getGroup(id);
  assert.equal(got.enrollmentGroupId, id);
  assertKeysHidden(got.attestation, 'group GET');
  assert.equal(got.etag, created.etag);
  assert.deepEqual(got.iotHubs, [testHub()]);

  const att = await svc.groupAttestation(id);
  assert.equal(att.symmetricKey.primaryKey, created.attestation.symmetricKey.primaryKey, 'group attestation returns the keys');
  assert.equal(att.symmetricKey.secondaryKey, created.attestation.symmetricKey.secondaryKey);

  const stale = JSON.parse(JSON.stringify(created));
  created.initialTwin.tags.fleet = 'b';
  const updated = await svc.putGroup(created);
  assert.notEqual(updated.etag, created.etag);
  assert.equal((await svc.getGroup(id)).initialTwin.tags.fleet, 'b');

  const staleErr = await expectReject(svc.putGroup(stale), 'group PUT with a stale etag');
  assertStatus(staleErr, 412, 'InvalidEtagError');

  const dupErr = await expectReject(svc.putGroup(symmetricGroup(id)), 'group create of an existing id without etag');
  assertStatus(dupErr, 409, 'DeviceAlreadyExistsError');

  const delStale = await expectReject(svc.deleteGroup(id, stale.etag), 'group DELETE with a stale etag');
  assertStatus(delStale, 412, 'InvalidEtagError');

  await svc.deleteGroup(updated);
  const gone = await expectReject(svc.getGroup(id), 'GET of a deleted group');
  assertStatus(gone, 404);
  assert.equal(gone.message, 'Not found');
  assertDpsError(gone, 404, 404204);
  const attGone = await expectReject(svc.groupAttestation(id), 'attestation of a deleted group');
  assertStatus(attGone, 404);
});

test('enrollment group: update of the GET object keeps the stored keys', T, async () => {
  const id = uid('sdk-grpkeep');
  const created = await svc.putGroup(symmetricGroup(id));
  const got = await svc.getGroup(id);
  got.provisioningStatus = 'disabled';
  const updated = await svc.putGroup(got);
  assert.equal(updated.provisioningStatus, 'disabled');
  const att = await svc.groupAttestation(id);
  assert.equal(att.symmetricKey.primaryKey, created.attestation.symmetricKey.primaryKey);
  await svc.deleteGroup(id);
});

// ---------------------------------------------------------------------------
// Queries (service-api.md §2.3, §10)

async function createMany(prefix, n, put) {
  const ids = [];
  for (let i = 0; i < n; i++) {
    const id = `${prefix}-${i}`;
    await put(id, i);
    ids.push(id);
  }
  return ids;
}

function assertPagedOnce(pages, mine, idField, pageSize, itemType) {
  const seen = new Map();
  pages.forEach((p, i) => {
    assert.ok(Array.isArray(p.items), `page ${i + 1} must be a JSON array, got ${safeJSON(p.items)}`);
    assert.ok(p.items.length <= pageSize, `page ${i + 1} has ${p.items.length} items, more than x-ms-max-item-count ${pageSize}`);
    const type = p.response.headers['x-ms-item-type'];
    assert.equal(type, itemType, `page ${i + 1} x-ms-item-type`);
    const last = i === pages.length - 1;
    const token = p.response.headers['x-ms-continuation'];
    if (last) assert.equal(token, undefined, 'no x-ms-continuation on the last page');
    else assert.ok(token, `page ${i + 1}: x-ms-continuation must be present and non-empty when more pages exist`);
    for (const item of p.items) {
      const id = item[idField];
      seen.set(id, (seen.get(id) || 0) + 1);
    }
  });
  for (const id of mine) {
    assert.equal(seen.get(id), 1, `${id} must appear exactly once across pages (seen ${seen.get(id) || 0})`);
  }
}

test('query individual enrollments with pageSize, paging via q.next(q.continuationToken)', T, async () => {
  const prefix = uid('sdk-q');
  const mine = await createMany(prefix, 5, (id) => svc.putEnrollment(symmetricEnrollment(id)));
  try {
    const q = svc.client.createIndividualEnrollmentQuery({ query: '*' }, 2);
    const pages = await svc.drain(q);
    assert.ok(pages.length >= 3, `5 enrollments with page size 2 need at least 3 pages, got ${pages.length}`);
    assertPagedOnce(pages, mine, 'registrationId', 2, 'Enrollment');
    for (const p of pages) for (const e of p.items) assertKeysHidden(e.attestation, `query item ${e.registrationId}`);
  } finally {
    for (const id of mine) await svc.deleteEnrollment(id);
  }
});

test('query individual enrollments, callback form of next()', T, async () => {
  const prefix = uid('sdk-qcb');
  const mine = await createMany(prefix, 3, (id) => svc.putEnrollment(symmetricEnrollment(id)));
  try {
    const q = svc.client.createIndividualEnrollmentQuery({ query: '*' }, 1);
    const pages = await svc.drainWithCallbacks(q);
    assert.ok(pages.length >= 3);
    assertPagedOnce(pages, mine, 'registrationId', 1, 'Enrollment');
  } finally {
    for (const id of mine) await svc.deleteEnrollment(id);
  }
});

test('query individual enrollments without page size returns everything', T, async () => {
  const prefix = uid('sdk-qall');
  const mine = await createMany(prefix, 3, (id) => svc.putEnrollment(symmetricEnrollment(id)));
  try {
    const q = svc.client.createIndividualEnrollmentQuery({ query: '*' });
    const pages = await svc.drain(q);
    const ids = new Set(pages.flatMap((p) => p.items.map((e) => e.registrationId)));
    for (const id of mine) assert.ok(ids.has(id), `${id} missing from query results`);
  } finally {
    for (const id of mine) await svc.deleteEnrollment(id);
  }
});

test('query enrollment groups with pageSize', T, async () => {
  const prefix = uid('sdk-qg');
  const mine = await createMany(prefix, 3, (id) => svc.putGroup(symmetricGroup(id)));
  try {
    const q = svc.client.createEnrollmentGroupQuery({ query: '*' }, 2);
    const pages = await svc.drain(q);
    assertPagedOnce(pages, mine, 'enrollmentGroupId', 2, 'EnrollmentGroup');
    for (const p of pages) for (const g of p.items) assertKeysHidden(g.attestation, `group query item ${g.enrollmentGroupId}`);
  } finally {
    for (const id of mine) await svc.deleteGroup(id);
  }
});

test('query individual enrollments with SELECT * FROM and a WHERE filter, paged', T, async () => {
  const prefix = uid('sdk-qw');
  const mine = await createMany(prefix, 6, (id, i) => svc.putEnrollment(symmetricEnrollment(id,
    { provisioningStatus: i % 2 === 0 ? 'disabled' : 'enabled' })));
  try {
    // The form the Azure samples use keeps returning everything.
    const all = await svc.drain(svc.client.createIndividualEnrollmentQuery({ query: 'SELECT * FROM enrollments' }, 4));
    const allIds = new Set(all.flatMap((p) => p.items.map((e) => e.registrationId)));
    for (const id of mine) assert.ok(allIds.has(id), `${id} missing from SELECT * FROM enrollments`);

    const q = svc.client.createIndividualEnrollmentQuery({ query:
      `SELECT * FROM enrollments WHERE provisioningStatus = 'disabled' AND registrationId IN ('${mine.join("','")}')` }, 1);
    const pages = await svc.drain(q);
    const got = pages.flatMap((p) => p.items.map((e) => e.registrationId));
    const want = mine.filter((_, i) => i % 2 === 0);
    assert.deepEqual(got, want, `filtered pages: ${safeJSON(got)}`);
    for (const p of pages) assert.ok(p.items.length <= 1, 'page size 1 is kept');
  } finally {
    for (const id of mine) await svc.deleteEnrollment(id);
  }
});

test('a query dpsd cannot filter is a 400, not everything', T, async () => {
  const q = svc.client.createIndividualEnrollmentQuery({ query: "SELECT * FROM enrollments WHERE registrationId LIKE 'a%'" }, 5);
  await assert.rejects(svc.drain(q), (err) => {
    assertStatus(err, 400, 'ArgumentError');
    return true;
  });
});

test('query registration states of a group with no registrations returns []', T, async () => {
  const id = uid('sdk-qr');
  await svc.putGroup(symmetricGroup(id));
  try {
    const q = svc.client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, id, 10);
    const pages = await svc.drain(q);
    assert.equal(pages.length, 1);
    assert.deepEqual(pages[0].items, []);
    assert.equal(pages[0].response.headers['x-ms-item-type'], 'DeviceRegistration');
  } finally {
    await svc.deleteGroup(id);
  }
});

// ---------------------------------------------------------------------------
// Bulk operations (service-api.md §2.6; callback form only)

test('bulk create: per-item errors, valid items created', T, async () => {
  const existing = uid('sdk-bulk-exists');
  await svc.putEnrollment(symmetricEnrollment(existing));
  const a = uid('sdk-bulk');
  const b = uid('sdk-bulk');
  const key = randomKey(32);
  try {
    const { body, response } = await svc.bulk({
      mode: 'create',
      enrollments: [
        symmetricEnrollment(a),
        { registrationId: b, attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: key, secondaryKey: key } } },
        symmetricEnrollment(existing),
      ],
    });
    assert.equal(response.statusCode, 200);
    assert.equal(body.isSuccessful, false, `one item already exists: ${safeJSON(body)}`);
    assert.ok(Array.isArray(body.errors), `errors: ${safeJSON(body)}`);
    assert.equal(body.errors.length, 1, `exactly the existing item fails: ${safeJSON(body)}`);
    assert.equal(body.errors[0].registrationId, existing);
    assert.equal(typeof body.errors[0].errorCode, 'number');
    assert.equal(Math.floor(body.errors[0].errorCode / 1000), 409, `conflict code: ${safeJSON(body.errors[0])}`);

    const gotA = await svc.getEnrollment(a);
    assert.equal(gotA.registrationId, a);
    const attB = await svc.enrollmentAttestation(b);
    assert.equal(attB.symmetricKey.primaryKey, key);
  } finally {
    for (const id of [a, b, existing]) await svc.deleteEnrollment(id).catch(() => {});
  }
});

test('bulk create all valid -> isSuccessful with no errors; bulk delete with a missing item', T, async () => {
  const ids = [uid('sdk-bulk2'), uid('sdk-bulk2'), uid('sdk-bulk2')];
  const created = await svc.bulk({ mode: 'create', enrollments: ids.map((id) => symmetricEnrollment(id)) });
  assert.equal(created.response.statusCode, 200);
  assert.equal(created.body.isSuccessful, true, safeJSON(created.body));
  assert.deepEqual(created.body.errors || [], []);
  for (const id of ids) assert.equal((await svc.getEnrollment(id)).registrationId, id);

  const missing = uid('sdk-bulk-missing');
  const deleted = await svc.bulk({ mode: 'delete', enrollments: [...ids, missing].map((id) => ({ registrationId: id })) });
  assert.equal(deleted.response.statusCode, 200);
  assert.equal(deleted.body.isSuccessful, false, `the missing item fails: ${safeJSON(deleted.body)}`);
  assert.equal(deleted.body.errors.length, 1, safeJSON(deleted.body));
  assert.equal(deleted.body.errors[0].registrationId, missing);
  assert.equal(Math.floor(deleted.body.errors[0].errorCode / 1000), 404, safeJSON(deleted.body.errors[0]));
  for (const id of ids) {
    const err = await expectReject(svc.getEnrollment(id), `GET after bulk delete of ${id}`);
    assertStatus(err, 404);
  }
});

test('bulk update and updateIfMatchETag', T, async () => {
  const id = uid('sdk-bulk-upd');
  const created = await svc.putEnrollment(symmetricEnrollment(id));
  try {
    const upd = await svc.bulk({ mode: 'update', enrollments: [symmetricEnrollment(id, { provisioningStatus: 'disabled' })] });
    assert.equal(upd.body.isSuccessful, true, safeJSON(upd.body));
    const got = await svc.getEnrollment(id);
    assert.equal(got.provisioningStatus, 'disabled');

    // created.etag is stale now: per-item 412
    const stale = await svc.bulk({ mode: 'updateIfMatchETag', enrollments: [{ ...symmetricEnrollment(id), etag: created.etag }] });
    assert.equal(stale.body.isSuccessful, false, safeJSON(stale.body));
    assert.equal(stale.body.errors[0].registrationId, id);
    assert.equal(Math.floor(stale.body.errors[0].errorCode / 1000), 412, safeJSON(stale.body.errors[0]));

    const ok = await svc.bulk({ mode: 'updateIfMatchETag', enrollments: [{ ...symmetricEnrollment(id, { provisioningStatus: 'enabled' }), etag: got.etag }] });
    assert.equal(ok.body.isSuccessful, true, safeJSON(ok.body));
    assert.equal((await svc.getEnrollment(id)).provisioningStatus, 'enabled');
  } finally {
    await svc.deleteEnrollment(id).catch(() => {});
  }
});

test('bulk with a duplicate id or more than 10 items fails as a whole (400)', T, async () => {
  const id = uid('sdk-bulk-dup');
  const dupErr = await expectReject(svc.bulk({ mode: 'create', enrollments: [symmetricEnrollment(id), symmetricEnrollment(id)] }), 'bulk with a duplicate id');
  assertStatus(dupErr, 400);
  const getErr = await expectReject(svc.getEnrollment(id), 'nothing created by a rejected bulk call');
  assertStatus(getErr, 404);

  const many = [];
  for (let i = 0; i < 11; i++) many.push(symmetricEnrollment(`${id}-${i}`));
  const bigErr = await expectReject(svc.bulk({ mode: 'create', enrollments: many }), 'bulk with 11 items');
  assertStatus(bigErr, 400);
  const getErr2 = await expectReject(svc.getEnrollment(`${id}-0`), 'nothing created by a rejected bulk call');
  assertStatus(getErr2, 404);
});

// ---------------------------------------------------------------------------
// Registration states (the device-side tests cover states of registered devices)

test('registration state of an unknown id: get and delete -> 404', T, async () => {
  const id = uid('sdk-noreg');
  const err = await expectReject(svc.getRegistration(id), 'GET registration state of an unknown id');
  assertStatus(err, 404);
  assertDpsError(err, 404);
  const delErr = await expectReject(svc.deleteRegistration(id), 'DELETE registration state of an unknown id');
  assertStatus(delErr, 404);
});

// ---------------------------------------------------------------------------
// Authentication (service-api.md §1.3)

function connectionStringWith(change) {
  const cs = ConnectionString.parse(info().serviceConnectionString);
  const parts = { HostName: cs.HostName, SharedAccessKeyName: cs.SharedAccessKeyName, SharedAccessKey: cs.SharedAccessKey, ...change };
  return Object.entries(parts).map(([k, v]) => `${k}=${v}`).join(';');
}

test('a wrong key or policy name -> 401 UnauthorizedError', T, async () => {
  const id = uid('sdk-auth');
  const badKey = new Service(connectionStringWith({ SharedAccessKey: randomKey(32) }));
  const err = await expectReject(badKey.getEnrollment(id), 'GET with a wrong key');
  assertStatus(err, 401, 'UnauthorizedError');
  assertDpsError(err, 401);

  const putErr = await expectReject(badKey.putEnrollment(symmetricEnrollment(id)), 'PUT with a wrong key');
  assertStatus(putErr, 401, 'UnauthorizedError');
  const notCreated = await expectReject(svc.getEnrollment(id), 'nothing created by an unauthorized PUT');
  assertStatus(notCreated, 404);

  const badPolicy = new Service(connectionStringWith({ SharedAccessKeyName: 'no-such-policy' }));
  const polErr = await expectReject(badPolicy.getEnrollment(id), 'GET with an unknown policy');
  assertStatus(polErr, 401, 'UnauthorizedError');

  const qErr = await expectReject(
    badKey.drain(badKey.client.createIndividualEnrollmentQuery({ query: '*' }, 5)), 'query with a wrong key');
  assertStatus(qErr, 401, 'UnauthorizedError');
});

test('the service connection string is usable as printed', T, async () => {
  const cs = ConnectionString.parse(info().serviceConnectionString);
  assert.equal(cs.HostName, info().hostName, 'HostName in the connection string is the info hostName');
  assert.equal(cs.SharedAccessKeyName, 'provisioningserviceowner');
  assert.equal(Buffer.from(cs.SharedAccessKey, 'base64').length > 0, true);
});
