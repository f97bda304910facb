'use strict';
// Drives the console in Firefox (Debian's firefox-esr, over WebDriver BiDi
// with puppeteer-core; nothing downloads a browser) and prints what it saw
// as one JSON line: the Firefox half of the console's browser tests
// (test/console/firefox_test.go). Not a test file itself.
//
//   FIREFOX=/usr/bin/firefox-esr node console-firefox.js <origin> <connection string> <group id>

const puppeteer = require('puppeteer-core');

const STEP_MS = 20000;

async function main() {
  const [origin, connectionString, groupId] = process.argv.slice(2);
  if (!origin || !connectionString || !groupId) {
    throw new Error('usage: node console-firefox.js <origin> <connection string> <group id>');
  }
  const seen = { offOrigin: [], pageErrors: [], steps: [] };
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
    headless: true,
    // The node's certificate comes from its local CA, which this throwaway
    // profile does not trust.
    acceptInsecureCerts: true,
    protocolTimeout: STEP_MS,
  });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('request', (req) => {
      const url = req.url();
      if (!url.startsWith(origin) && !url.startsWith('data:') && !url.startsWith('about:')) seen.offOrigin.push(url);
    });
    page.on('pageerror', (err) => seen.pageErrors.push(String(err && err.message ? err.message : err)));
    await page.setViewport({ width: 1280, height: 900 });

    await page.goto(origin + '/', { waitUntil: 'load' });
    await page.waitForSelector('#signin-form', { visible: true });
    seen.browser = await browser.version();
    seen.steps.push('signin page');

    await page.type('#connection-string', connectionString);
    await page.click('#sign-in');
    await page.waitForSelector('#id-scope', { visible: true });
    seen.idScope = await page.$eval('#id-scope', (el) => el.textContent.trim());
    seen.steps.push('signed in');

    await page.goto(origin + '/console/#/groups', { waitUntil: 'load' });
    await page.waitForSelector('#create', { visible: true });
    await page.click('#create');
    await page.waitForSelector('#enrollment-form', { visible: true });
    await page.type('#id', groupId);
    await page.click('#save');
    await page.waitForSelector('#show-keys', { visible: true });
    seen.steps.push('group created');

    // Phone width: the overview and the groups list fit without scrolling
    // sideways.
    await page.setViewport({ width: 375, height: 800 });
    seen.overflow = {};
    for (const route of ['#/', '#/groups', '#/registrations']) {
      await page.goto(origin + '/console/' + route, { waitUntil: 'load' });
      await page.waitForSelector('main', { visible: true });
      await new Promise((r) => setTimeout(r, 300));
      seen.overflow[route] = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    }
    seen.steps.push('phone width');

    // The Content-Security-Policy forbids inline script in Firefox too.
    seen.inlineRan = await page.evaluate(() => {
      window.__inline = false;
      const s = document.createElement('script');
      s.textContent = 'window.__inline = true;';
      document.body.appendChild(s);
      return window.__inline;
    });

    await page.click('#sign-out');
    await page.waitForSelector('#signin-form', { visible: true });
    seen.steps.push('signed out');
  } finally {
    await browser.close();
  }
  process.stdout.write('RESULT ' + JSON.stringify(seen) + '\n');
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
