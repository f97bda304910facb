'use strict';
// Registers one device with the official device provisioning client over
// HTTPS and prints its registration state as JSON: the device of the
// console's browser test (test/console). Not a test file itself.
//
//   DPSD_INFO=<info.json> node console-register.js <registrationId> <derived key>

const { register } = require('./lib/device');

async function main() {
  const [registrationId, key] = process.argv.slice(2);
  if (!registrationId || !key) {
    throw new Error('usage: node console-register.js <registrationId> <key>');
  }
  const state = await register('http', registrationId, key, { label: 'console' });
  process.stdout.write('RESULT ' + JSON.stringify(state) + '\n');
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
