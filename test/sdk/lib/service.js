'use strict';
// Bounded wrappers around the official provisioning service client
// (azure-iot-provisioning-service). Every call has a time limit; the calls
// the npm client gets wrong in promise form use the callback form
// (service-api.md §10).

const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
const { info, withTimeout } = require('./dpsd');

const CALL_MS = 30000;

function serviceClient(connectionString) {
  return ProvisioningServiceClient.fromConnectionString(connectionString || info().serviceConnectionString);
}

// call runs fn(client, callback) with the SDK's callback form and resolves
// {body, response}; the error (if any) is the SDK's.
function call(what, fn) {
  return withTimeout(new Promise((resolve, reject) => {
    fn((err, body, response) => {
      if (err) reject(err);
      else resolve({ body, response });
    });
  }), CALL_MS, what);
}

class Service {
  constructor(connectionString) {
    this.client = serviceClient(connectionString);
  }

  async putEnrollment(enrollment) {
    return (await call(`createOrUpdateIndividualEnrollment ${enrollment.registrationId}`,
      (cb) => this.client.createOrUpdateIndividualEnrollment(enrollment, cb))).body;
  }

  async getEnrollment(id) {
    return (await call(`getIndividualEnrollment ${id}`, (cb) => this.client.getIndividualEnrollment(id, cb))).body;
  }

  async deleteEnrollment(idOrObject, etag) {
    await call(`deleteIndividualEnrollment ${idOrObject.registrationId || idOrObject}`, (cb) => {
      if (etag !== undefined) this.client.deleteIndividualEnrollment(idOrObject, etag, cb);
      else this.client.deleteIndividualEnrollment(idOrObject, cb);
    });
  }

  async enrollmentAttestation(id) {
    return (await call(`getIndividualEnrollmentAttestationMechanism ${id}`,
      (cb) => this.client.getIndividualEnrollmentAttestationMechanism(id, cb))).body;
  }

  async putGroup(group) {
    return (await call(`createOrUpdateEnrollmentGroup ${group.enrollmentGroupId}`,
      (cb) => this.client.createOrUpdateEnrollmentGroup(group, cb))).body;
  }

  async getGroup(id) {
    return (await call(`getEnrollmentGroup ${id}`, (cb) => this.client.getEnrollmentGroup(id, cb))).body;
  }

  async deleteGroup(idOrObject, etag) {
    await call(`deleteEnrollmentGroup ${idOrObject.enrollmentGroupId || idOrObject}`, (cb) => {
      if (etag !== undefined) this.client.deleteEnrollmentGroup(idOrObject, etag, cb);
      else this.client.deleteEnrollmentGroup(idOrObject, cb);
    });
  }

  async groupAttestation(id) {
    return (await call(`getEnrollmentGroupAttestationMechanism ${id}`,
      (cb) => this.client.getEnrollmentGroupAttestationMechanism(id, cb))).body;
  }

  async getRegistration(id) {
    return (await call(`getDeviceRegistrationState ${id}`, (cb) => this.client.getDeviceRegistrationState(id, cb))).body;
  }

  async deleteRegistration(idOrObject, etag) {
    await call(`deleteDeviceRegistrationState ${idOrObject.registrationId || idOrObject}`, (cb) => {
      if (etag !== undefined) this.client.deleteDeviceRegistrationState(idOrObject, etag, cb);
      else this.client.deleteDeviceRegistrationState(idOrObject, cb);
    });
  }

  // bulk uses the callback form: the promise form never settles (npm bug).
  async bulk(op) {
    return call(`runBulkEnrollmentOperation ${op.mode}`, (cb) => this.client.runBulkEnrollmentOperation(op, cb));
  }

  // drain pages through a Query with q.next(q.continuationToken) (the promise
  // form without a token re-requests page 1: npm bug). Bounded by maxPages.
  async drain(query, maxPages = 200) {
    const pages = [];
    for (let i = 0; i < maxPages && query.hasMoreResults; i++) {
      const token = query.continuationToken;
      const res = await withTimeout(i === 0 ? query.next() : query.next(token), CALL_MS, `query page ${i + 1}`);
      pages.push({ items: res.responseBody, response: res.httpResponse, sentToken: token });
    }
    if (query.hasMoreResults) throw new Error(`query still had more results after ${maxPages} pages`);
    return pages;
  }

  // drainWithCallbacks pages with the callback form q.next(cb), which sends
  // the stored continuation token itself.
  async drainWithCallbacks(query, maxPages = 200) {
    const pages = [];
    for (let i = 0; i < maxPages && query.hasMoreResults; i++) {
      const page = await call(`query page ${i + 1} (callback form)`, (cb) => query.next(cb));
      pages.push({ items: page.body, response: page.response });
    }
    if (query.hasMoreResults) throw new Error(`query still had more results after ${maxPages} pages`);
    return pages;
  }
}

module.exports = { Service, serviceClient, CALL_MS };
