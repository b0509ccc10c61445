// Drives the approval page in headless Chromium (Debian's /usr/bin/chromium via playwright-core):
//   node tests/browser/approval.mjs URL approve|look
// Prints one JSON line: {"status": <HTTP status of the page>, "text": <visible text after the action>}.
// Run by tests/core/browser.rs; `make browser-deps` installs Chromium and playwright-core.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', '..', '.tools', 'package.json'));
const { chromium } = require('playwright-core');

const [url, action = 'look'] = process.argv.slice(2);
if (!url) {
  console.error('usage: approval.mjs URL approve|look');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // The machine's network is closed: keep Chromium from reaching out.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  const response = await page.goto(url);
  let status = response.status();
  if (action === 'approve') {
    const approve = page.locator('#approve');
    if (await approve.count() === 0) {
      throw new Error(`no Approve button on the page (status ${status}): ${await page.innerText('body')}`);
    }
    const [answer] = await Promise.all([page.waitForNavigation(), approve.click()]);
    status = answer ? answer.status() : status;
  }
  console.log(JSON.stringify({ status, text: await page.innerText('body') }));
} finally {
  await browser.close();
}
