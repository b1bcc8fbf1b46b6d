// The Connections page in a real browser (Debian's chromium driven by
// playwright-core), against a real server, Postgres and NATS started by
// tests/e2e/page.rs, which passes: the base URL, alice's and bob's user
// tokens, alice's google-calendar connection bound to agents a1 and a2 (and
// another without agents), and the directory for screenshots. Every check
// throws on failure; the process exits non-zero then.
import { chromium } from 'playwright-core';
import { readFileSync, mkdirSync } from 'node:fs';
import assert from 'node:assert/strict';

const [base, alice, bob, usedId, spareId, shots] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const axeSource = readFileSync(new URL('./node_modules/axe-core/axe.min.js', import.meta.url), 'utf8');
mkdirSync(shots, { recursive: true });

const step = (name) => console.log(`page: ${name}`);
const api = (token, method, path, body) => fetch(`${base}${path}`, {
  method,
  headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
  body: body === undefined ? undefined : JSON.stringify(body),
}).then(async (answer) => ({ status: answer.status, body: await answer.json().catch(() => null) }));

async function axe(page, what) {
  // Evaluated through the DevTools protocol: the page's own CSP still
  // forbids inline script for everything else.
  const results = await page.evaluate(`${axeSource}; axe.run(document, { resultTypes: ['violations'] })`);
  const serious = results.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(serious.map((v) => `${v.id}: ${v.help}`), [], `accessibility violations on ${what}`);
  step(`axe on ${what}: ${results.violations.length} violations, none serious`);
}

const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  // Failed requests are expected here (the CSRF probe, a made-up id, no
  // favicon); anything else logged as an error (a CSP violation, a script
  // error) is a failure.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) problems.push(message.text());
  });
  page.on('pageerror', (error) => problems.push(error.message));

  step('sign in through the URL fragment');
  const first = await page.goto(`${base}/sign-in#token=${alice}`);
  const csp = first.headers()['content-security-policy'] ?? '';
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  await page.waitForURL(`${base}/`);
  await page.getByText('Signed in as alice').waitFor();
  assert.ok(!page.url().includes(alice), 'no token in the URL after sign-in');
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'connections_session');
  assert.ok(session && session.httpOnly && session.sameSite === 'Strict', JSON.stringify(cookies.map((c) => c.name)));
  assert.equal(await page.evaluate(() => localStorage.length + sessionStorage.length), 0, 'nothing in web storage');

  step('cards');
  const card = page.locator('[data-service="google-calendar"]');
  await card.getByText('2 connections').waitFor();
  await page.locator('[data-service="github"]').getByText('1 connection').waitFor();
  assert.ok(!(await page.locator('main').innerText()).includes('null'), 'nothing renders as null');
  await page.screenshot({ path: `${shots}/cards.png`, fullPage: true });
  await axe(page, 'the cards');

  step('a change made through the API appears live');
  const created = await api(alice, 'POST', '/v1/connections',
    { service: 'github', name: 'Second', credential: { kind: 'api_key', key: 'k-live' } });
  assert.equal(created.status, 201);
  await page.locator('[data-service="github"]').getByText('2 connections').waitFor({ timeout: 5000 });

  step('keyboard: reach the card link and open it');
  await page.locator('a[href="#/service/google-calendar"]').focus();
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'google-calendar' }).waitFor();
  await page.getByRole('table').waitFor();

  step('usage of a connection');
  await page.goto(`${base}/#/connection/${usedId}`);
  const usage = page.locator('#usage');
  await usage.getByText('a1', { exact: true }).waitFor();
  await usage.getByText('a2', { exact: true }).waitFor();
  assert.match(await usage.textContent(), /bound when it was created|assigned by you/);
  await page.screenshot({ path: `${shots}/usage.png`, fullPage: true });
  await axe(page, 'the usage view');

  step('set the default');
  await page.getByRole('button', { name: /the default/ }).first().click();
  await page.locator('dd', { hasText: 'Yes' }).waitFor();

  step('rotate without echoing the secret');
  await page.locator('#rotate-secret').fill('rotated-secret-canary');
  await page.locator('#rotate-secret').press('Enter');
  await page.getByText('api_key, version 2').waitFor();
  assert.equal(await page.locator('#rotate-secret').inputValue(), '', 'the form is cleared');
  assert.ok(!(await page.content()).includes('rotated-secret-canary'), 'the secret is not in the page');

  step('a live update waits while the user types, then shows');
  await page.locator('#assign-agent').fill('a3');
  assert.equal((await api(alice, 'POST', `/v1/connections/${usedId}/agents`, { agent_id: 'a9' })).status, 200);
  await page.waitForTimeout(1000);
  assert.equal(await page.locator('#assign-agent').inputValue(), 'a3', 'what the user typed is kept');
  await page.locator('#assign-agent').press('Enter');
  await usage.getByText('a3', { exact: true }).waitFor();
  await usage.getByText('a9', { exact: true }).waitFor();

  step('revoke: the agents are named before and after');
  await page.getByRole('button', { name: 'Revoke' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  assert.deepEqual(await dialog.locator('#affected-before li').allTextContents(), ['a1', 'a2', 'a3', 'a9']);
  await dialog.getByRole('button', { name: 'Revoke' }).click();
  await page.getByText('Revoked. Affected agents: a1, a2, a3, a9.').waitFor();
  await page.locator('#status', { hasText: 'revoked' }).waitFor();
  await page.getByText(/Revoked by alice, 4 agents affected/).waitFor();

  step('a cookie-authenticated command without the page header is refused (CSRF)');
  const forged = await page.evaluate(async (id) => (await fetch(`/v1/connections/${id}`, { method: 'DELETE' })).status, spareId);
  assert.equal(forged, 401);
  assert.equal((await api(alice, 'GET', `/v1/connections/${spareId}`)).body.status, 'active', 'nothing revoked');

  step('errors are sentences');
  await page.goto(`${base}/#/connection/not-an-id`);
  await page.getByRole('heading', { name: 'Not found' }).waitFor();

  step('phone width');
  await page.setViewportSize({ width: 375, height: 740 });
  await page.goto(`${base}/#/`);
  await page.locator('[data-service="google-calendar"]').waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the cards fit a phone (overflow ${overflow}px)`);

  assert.deepEqual(problems, [], 'no console errors (CSP violations included)');

  step('another user sees nothing of alice');
  const other = await browser.newContext();
  const bobPage = await other.newPage();
  await bobPage.goto(`${base}/sign-in#token=${bob}`);
  await bobPage.getByText('Signed in as bob').waitFor();
  await bobPage.getByText('No connections yet.').waitFor();
  await bobPage.goto(`${base}/#/connection/${spareId}`);
  await bobPage.getByRole('heading', { name: 'Not found' }).waitFor();
  await bobPage.goto(`${base}/#/service/google-calendar`);
  await bobPage.getByRole('heading', { name: 'Not found' }).waitFor();
  assert.ok(!(await bobPage.content()).includes('Second'), "none of alice's names");
  step('done');
} catch (error) {
  // What the page showed when it failed.
  for (const context of browser.contexts()) {
    for (const open of context.pages()) {
      console.log(`page at ${open.url()}:\n${await open.locator('body').innerText().catch(() => '?')}`);
      await open.screenshot({ path: `${shots}/failure.png` }).catch(() => {});
    }
  }
  throw error;
} finally {
  await browser.close();
}
