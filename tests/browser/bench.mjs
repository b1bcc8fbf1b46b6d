// The page's benchmark (run by ops/bench-page against a fresh server):
//  1. navigation → cards visible, with 200 connections over 20 services,
//     measured in the page (from the navigation's start to the render of
//     all 20 cards), against a bare GET /v1/services from node (the data
//     the cards need) in the same run;
//  2. revoke made through the API elsewhere → the card's count changing on
//     screen (a MutationObserver in the page), against the raw SSE delivery
//     of the same change to a bare /v1/stream reader in node, same revokes.
import { chromium } from 'playwright-core';

const [base, token] = process.argv.slice(2);
const runs = Number(process.env.BENCH_RUNS ?? 20);
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };
const call = async (method, path, body) => {
  const answer = await fetch(`${base}${path}`, { method, headers, body: body && JSON.stringify(body) });
  if (!answer.ok) throw new Error(`${method} ${path}: ${answer.status} ${await answer.text()}`);
  return answer.json();
};
const summary = (samples) => {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * q) - 1)];
  return { n: sorted.length, p50: at(0.5), p90: at(0.9), max: sorted[sorted.length - 1] };
};
const show = (s) => `p50 ${s.p50.toFixed(1)} p90 ${s.p90.toFixed(1)} max ${s.max.toFixed(1)} ms (n=${s.n})`;

// 200 connections over 20 services, some bound to agents.
const services = Array.from({ length: 20 }, (_, i) => `service-${String(i).padStart(2, '0')}`);
const ids = new Map(services.map((s) => [s, []]));
const jobs = [];
for (const service of services) {
  for (let n = 0; n < 10; n += 1) {
    jobs.push(async () => {
      const created = await call('POST', '/v1/connections', {
        service, name: `${service} #${n}`, agent_id: n < 3 ? `agent-${n}` : undefined,
        credential: { kind: 'api_key', key: `k-${service}-${n}` },
      });
      ids.get(service).push(created.connection_id);
    });
  }
}
while (jobs.length) await Promise.all(jobs.splice(0, 8).map((job) => job()));
for (let waited = 0; ; waited += 1) {
  const { services: cards } = await call('GET', '/v1/services');
  if (cards.length === 20 && cards.every((c) => c.active_connections === 10)) break;
  if (waited > 100) throw new Error('the read models did not catch up');
  await new Promise((done) => setTimeout(done, 100));
}
console.log('bench page: 200 connections over 20 services');

// The raw read the cards need.
const raw = [];
for (let i = 0; i < runs; i += 1) {
  const started = performance.now();
  await call('GET', '/v1/services');
  raw.push(performance.now() - started);
}

const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/sign-in#token=${token}`);
  await page.waitForURL(`${base}/`);
  const navigation = [];
  const loaded = [];
  for (let i = 0; i < runs; i += 1) {
    await page.goto(`${base}/?run=${i}`);
    await page.waitForFunction(() => document.querySelectorAll('.card').length === 20 && document.getElementById('main').dataset.rendered);
    navigation.push(await page.evaluate(() => Number(document.getElementById('main').dataset.rendered) - performance.timeOrigin));
    loaded.push(await page.evaluate(() => performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd));
  }
  console.log(`navigation → 20 cards visible: ${show(summary(navigation))}`);
  console.log(`baseline navigation → the page's HTML and script loaded (DOMContentLoaded): ${show(summary(loaded))}`);
  console.log(`baseline GET /v1/services from node: ${show(summary(raw))}`);

  // A bare SSE reader: when each revocation arrives.
  const arrivals = new Map();
  const stream = await fetch(`${base}/v1/stream`, { headers: { Authorization: `Bearer ${token}` } });
  const reader = stream.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffered += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffered.indexOf('\n\n')) >= 0) {
        const frame = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        if (!frame.includes('event: connection_revoked')) continue;
        const data = frame.split('\n').find((line) => line.startsWith('data:'));
        const change = JSON.parse(data.slice(5));
        arrivals.set(change.connection_id, Date.now());
      }
    }
  })();
  await new Promise((done) => setTimeout(done, 500));

  const toScreen = [];
  const toSse = [];
  for (const service of services.slice(0, Math.min(runs, services.length))) {
    const id = ids.get(service)[9];
    // Wait in the page for this card's count to change.
    const changed = page.evaluate((name) => new Promise((done) => {
      const count = document.querySelector(`[data-service="${name}"]`);
      const observer = new MutationObserver(() => {
        const now = document.querySelector(`[data-service="${name}"]`);
        if (now && now.textContent === '9 connections') { observer.disconnect(); done(Date.now()); }
      });
      observer.observe(document.getElementById('main'), { childList: true, subtree: true, characterData: true });
      if (!count) done(-1);
    }), service);
    await new Promise((done) => setTimeout(done, 100));
    const started = Date.now();
    await call('DELETE', `/v1/connections/${id}`);
    const onScreen = await changed;
    for (let waited = 0; !arrivals.has(id) && waited < 100; waited += 1) await new Promise((d) => setTimeout(d, 10));
    toScreen.push(onScreen - started);
    toSse.push(arrivals.get(id) - started);
  }
  const screen = summary(toScreen);
  const sse = summary(toSse);
  console.log(`revoke call → card count changed on screen: ${show(screen)}`);
  console.log(`revoke call → raw SSE delivery of the same change: ${show(sse)}`);
  console.log(`ratio on screen / raw SSE: p50 ${(screen.p50 / sse.p50).toFixed(2)} max ${(screen.max / sse.max).toFixed(2)}`);
  await reader.cancel();
} finally {
  await browser.close();
}
