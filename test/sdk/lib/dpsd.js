'use strict';
// Shared helpers for the SDK conformance tests: where the dpsd under test is,
// unique ids, key derivation, and bounded wrappers around the SDK calls.

const fs = require('node:fs');
const https = require('node:https');
const crypto = require('node:crypto');
const assert = require('node:assert/strict');

// loadInfo returns the dpsd info (internal/server/info.go): DPSD_INFO is either the
// JSON itself or the path of the info.json file.
function loadInfo() {
  const raw = process.env.DPSD_INFO;
  if (!raw) {
    throw new Error('DPSD_INFO is not set: it must hold the path of a running dpsd\'s info.json (or its JSON)');
  }
  const text = raw.trim().startsWith('{') ? raw : fs.readFileSync(raw, 'utf8');
  const info = JSON.parse(text);
  for (const k of ['idScope', 'serviceConnectionString', 'hostName']) {
    if (!info[k]) throw new Error(`dpsd info has no ${k}: ${text}`);
  }
  return info;
}

let cachedInfo;
function info() {
  if (!cachedInfo) cachedInfo = loadInfo();
  return cachedInfo;
}

// The host name devices and service clients use. The npm clients always dial
// port 443 (HTTPS, MQTT over WebSockets) and 8883 (MQTT) on it.
function host() {
  return info().hostName;
}

// The IoT hub the tests ask for with static allocation, until built-in hubs
// and linked hubs exist. DPSD_TEST_HUB overrides it.
function testHub() {
  return process.env.DPSD_TEST_HUB || 'e2e-hub.example';
}

const runTag = `${Date.now().toString(36)}${crypto.randomBytes(3).toString('hex')}`;
let seq = 0;
// uid returns an id unique to this run, lower-case, valid as a registration
// or enrollment group id.
function uid(prefix) {
  seq++;
  return `${prefix}-${runTag}-${seq}`.toLowerCase();
}

// deriveKey computes a group member's device key:
// base64(HMAC-SHA256(base64decode(groupKey), registrationId)).
function deriveKey(groupKeyB64, registrationId) {
  return crypto.createHmac('sha256', Buffer.from(groupKeyB64, 'base64')).update(registrationId, 'utf8').digest('base64');
}

function randomKey(bytes = 32) {
  return crypto.randomBytes(bytes).toString('base64');
}

// withTimeout rejects when promise does not settle within ms, after calling
// onTimeout (e.g. to cancel the SDK operation).
function withTimeout(promise, ms, what, onTimeout) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      try { if (onTimeout) onTimeout(); } catch (_) { /* ignore */ }
      reject(new Error(`timed out after ${ms} ms: ${what}`));
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// expectReject awaits a promise that must fail and returns the error.
async function expectReject(promise, what) {
  let result;
  try {
    result = await promise;
  } catch (err) {
    return err;
  }
  assert.fail(`${what}: expected an error, got success: ${safeJSON(result && result.responseBody !== undefined ? result.responseBody : result)}`);
}

function safeJSON(v) {
  try {
    return JSON.stringify(v);
  } catch (_) {
    return String(v);
  }
}

// describeError renders an SDK error with what the server sent, for messages.
function describeError(err) {
  if (!err) return String(err);
  const parts = [`${err.name || 'Error'}: ${err.message}`];
  const status = httpStatus(err);
  if (status) parts.push(`status=${status}`);
  const amqp = amqpError(err);
  if (amqp) parts.push(`amqp=${amqp.condition} ${amqp.description || ''}`);
  if (err.responseBody !== undefined) parts.push(`body=${typeof err.responseBody === 'string' ? err.responseBody : safeJSON(err.responseBody)}`);
  if (err.result !== undefined) parts.push(`result=${safeJSON(err.result)}`);
  return parts.join(' ');
}

// amqpError returns the AMQP error of a refused AMQP request: the Node
// AMQP transport passes the rejected delivery's error object itself
// ({condition, description, info}) or, translated, as err.amqpError.
function amqpError(err) {
  if (err && typeof err.condition === 'string') return err;
  if (err && err.amqpError && typeof err.amqpError.condition === 'string') return err.amqpError;
  return undefined;
}

function httpStatus(err) {
  if (err && err.response && err.response.statusCode) return err.response.statusCode;
  if (err && err.transportObject && err.transportObject.statusCode) return err.transportObject.statusCode;
  return undefined;
}

// dpsErrorBody parses the DPS error JSON the server sent with an error, if any.
function dpsErrorBody(err) {
  let body = err && (err.responseBody !== undefined ? err.responseBody : err.result);
  // Over AMQP the DPS error JSON is the rejected delivery's description.
  const amqp = amqpError(err);
  if (body === undefined && amqp) body = amqp.description;
  if (typeof body === 'string') {
    try {
      body = JSON.parse(body);
    } catch (_) {
      return undefined;
    }
  }
  return body && typeof body === 'object' ? body : undefined;
}

// assertDpsError checks an error body: {errorCode:int, trackingId, message,
// timestampUtc}, errorCode/1000 == HTTP status, optionally an exact code.
function assertDpsError(err, status, exactCode) {
  const body = dpsErrorBody(err);
  assert.ok(body, `expected a DPS error body, got: ${describeError(err)}`);
  assert.equal(typeof body.errorCode, 'number', `errorCode must be an integer: ${safeJSON(body)}`);
  assert.equal(Math.floor(body.errorCode / 1000), status, `errorCode/1000 must equal HTTP status ${status}: ${safeJSON(body)}`);
  if (exactCode !== undefined) assert.equal(body.errorCode, exactCode, `errorCode: ${safeJSON(body)}`);
  assert.equal(typeof body.message, 'string', `message: ${safeJSON(body)}`);
  assert.ok(body.trackingId, `trackingId: ${safeJSON(body)}`);
  assert.ok(body.timestampUtc, `timestampUtc: ${safeJSON(body)}`);
  return body;
}

// closeIdleConnections lets the process exit once the tests are done: the
// SDKs use the global HTTPS agent, which keeps connections alive.
function closeIdleConnections() {
  https.globalAgent.destroy();
}

module.exports = {
  info,
  host,
  testHub,
  uid,
  deriveKey,
  randomKey,
  withTimeout,
  expectReject,
  describeError,
  httpStatus,
  amqpError,
  dpsErrorBody,
  assertDpsError,
  safeJSON,
  closeIdleConnections,
};
