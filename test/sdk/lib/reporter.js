'use strict';
// A node:test reporter for the Go driver (test/e2e): readable lines, plus one
// machine line per finished test:
//   ##dpsd-result {"name":..., "status":"pass"|"fail"|"skip", "ms":..., "error":...}
// Usage: node --test-reporter=./lib/reporter.js --test-reporter-destination=stdout FILE.test.js

const util = require('node:util');

function errorText(error) {
  if (!error) return '';
  const inner = error.cause && error.code === 'ERR_TEST_FAILURE' ? error.cause : error;
  return util.inspect(inner, { depth: 4, breakLength: 120 });
}

module.exports = async function* dpsdReporter(source) {
  const counts = { pass: 0, fail: 0, skip: 0 };
  for await (const event of source) {
    const data = event.data || {};
    switch (event.type) {
      case 'test:start':
        yield `RUN  ${data.name}\n`;
        break;
      case 'test:pass': {
        const status = data.skip !== undefined || data.todo !== undefined ? 'skip' : 'pass';
        const ms = data.details && data.details.duration_ms;
        counts[status]++;
        yield `${status === 'pass' ? 'PASS' : 'SKIP'} ${data.name} (${ms !== undefined ? ms.toFixed(0) : '?'} ms)\n`;
        yield `##dpsd-result ${JSON.stringify({ name: data.name, nesting: data.nesting, status, ms })}\n`;
        break;
      }
      case 'test:fail': {
        const ms = data.details && data.details.duration_ms;
        const text = errorText(data.details && data.details.error);
        counts.fail++;
        yield `FAIL ${data.name} (${ms !== undefined ? ms.toFixed(0) : '?'} ms)\n`;
        yield `${text.split('\n').map((l) => `    ${l}`).join('\n')}\n`;
        yield `##dpsd-result ${JSON.stringify({ name: data.name, nesting: data.nesting, status: 'fail', ms, error: text })}\n`;
        break;
      }
      case 'test:diagnostic':
        yield `# ${data.message}\n`;
        break;
      case 'test:stdout':
      case 'test:stderr':
        yield data.message;
        break;
      default:
        break;
    }
  }
  yield `# totals: pass=${counts.pass} fail=${counts.fail} skip=${counts.skip}\n`;
};
