// Real browser against Junction: serves index.html + bundle.js from a local static server on
// its own port (so every call to Junction is cross-origin and CORS is exercised), drives
// headless Chromium through playwright-core, waits for page/track/identify to be delivered,
// and prints one JSON report line.
//
// Usage: node browser/browser.mjs --junction http://127.0.0.1:PORT --write-key wk_web_0123
//        [--chromium /usr/bin/chromium] [--timeout-ms 40000]
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    junction: { type: 'string' },
    'write-key': { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
    'timeout-ms': { type: 'string', default: '40000' },
  },
});
if (!args.junction || !args['write-key']) {
  console.error('usage: node browser.mjs --junction URL --write-key KEY');
  process.exit(2);
}
const timeoutMs = Number(args['timeout-ms']);
const junction = args.junction.replace(/\/+$/, '');
const junctionOrigin = new URL(junction).origin;

const hardStop = setTimeout(() => {
  console.error(`browser.mjs: did not finish within ${timeoutMs + 15000} ms`);
  process.exit(3);
}, timeoutMs + 15000);
hardStop.unref();

// --- the static server (only the two files) ---------------------------------------------
const files = {
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/bundle.js': ['bundle.js', 'text/javascript; charset=utf-8'],
};
const staticServer = http.createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  const f = files[path];
  if (path === '/favicon.ico') {
    res.writeHead(204).end();
    return;
  }
  if (!f) {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
    return;
  }
  try {
    const body = await readFile(join(here, f[0]));
    res.writeHead(200, { 'content-type': f[1], 'cache-control': 'no-store' }).end(body);
  } catch (e) {
    res.writeHead(500, { 'content-type': 'text/plain' }).end(String(e));
  }
});
await new Promise((resolve) => staticServer.listen(0, '127.0.0.1', resolve));
const pageOrigin = `http://127.0.0.1:${staticServer.address().port}`;
const pageUrl = `${pageOrigin}/index.html?junction=${encodeURIComponent(junction)}&writeKey=${encodeURIComponent(args['write-key'])}`;

// --- the browser --------------------------------------------------------------------------
const report = {
  pageOrigin,
  pageUrl,
  junctionOrigin,
  userAgent: null,
  settings: null, // {url, status, allowOrigin, body}
  requests: [], // every request to Junction: {method, url, path, status, allowOrigin, failure}
  preflights: [], // CORS preflights Chromium sent to Junction (seen through CDP)
  console: [],
  pageErrors: [],
  page: null, // window.__junction
  errors: [],
};

let browser;
try {
  browser = await chromium.launch({
    executablePath: args.chromium,
    headless: true,
    timeout: 20000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  report.userAgent = await page.evaluate(() => navigator.userAgent);
  page.on('console', (m) => report.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => report.pageErrors.push(String(e?.stack ?? e)));

  const toJunction = (req) => req.url().startsWith(junctionOrigin);
  const entries = new Map();
  page.on('request', (req) => {
    if (!toJunction(req)) return;
    entries.set(req, { method: req.method(), url: req.url(), path: new URL(req.url()).pathname, status: null, allowOrigin: null, failure: null });
  });
  page.on('requestfailed', (req) => {
    const e = entries.get(req);
    if (e) e.failure = req.failure()?.errorText ?? 'failed';
  });
  const settled = [];
  page.on('response', (resp) => {
    const e = entries.get(resp.request());
    if (!e) return;
    e.status = resp.status();
    const headers = resp.headers();
    e.allowOrigin = headers['access-control-allow-origin'] ?? null;
    e.allowCredentials = headers['access-control-allow-credentials'] ?? null;
    if (e.path.endsWith('/settings')) {
      settled.push(
        resp
          .text()
          .then((t) => {
            report.settings = { url: e.url, status: e.status, allowOrigin: e.allowOrigin, body: JSON.parse(t) };
          })
          .catch((err) => {
            report.settings = { url: e.url, status: e.status, allowOrigin: e.allowOrigin, bodyError: String(err) };
          }),
      );
    }
  });

  // Preflights do not show up as Playwright requests: watch them through CDP.
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const preflights = new Map();
  cdp.on('Network.requestWillBeSent', (ev) => {
    if (ev.initiator?.type === 'preflight' && ev.request.url.startsWith(junctionOrigin)) {
      preflights.set(ev.requestId, {
        url: ev.request.url,
        path: new URL(ev.request.url).pathname,
        requestHeaders: ev.request.headers['Access-Control-Request-Headers'] ?? ev.request.headers['access-control-request-headers'] ?? null,
        status: null,
        headers: null,
      });
    }
  });
  cdp.on('Network.responseReceived', (ev) => {
    const p = preflights.get(ev.requestId);
    if (p) {
      p.status = ev.response.status;
      p.headers = Object.fromEntries(Object.entries(ev.response.headers).map(([k, v]) => [k.toLowerCase(), v]));
    }
  });

  await page.goto(pageUrl, { waitUntil: 'load', timeout: 15000 });
  try {
    await page.waitForFunction(() => window.__junction && window.__junction.done, null, { timeout: timeoutMs, polling: 100 });
  } catch (e) {
    report.errors.push(`the page did not finish: ${e.message.split('\n')[0]}`);
  }
  report.page = await page.evaluate(() => window.__junction ?? null);
  await Promise.allSettled(settled);
  report.requests = [...entries.values()];
  report.preflights = [...preflights.values()];
  if (!report.settings) report.errors.push('no settings request to Junction was seen');
  if (report.page?.errors?.length) report.errors.push(...report.page.errors.map((e) => `page: ${e}`));
  for (const r of report.requests) {
    if (r.failure) report.errors.push(`${r.method} ${r.path} failed: ${r.failure}`);
  }
  await context.close();
} catch (e) {
  report.errors.push(`exception: ${e?.stack ?? e}`);
} finally {
  if (browser) await browser.close().catch(() => {});
  staticServer.closeAllConnections?.();
  staticServer.close();
}
process.stdout.write(JSON.stringify(report) + '\n');
process.exitCode = 0; // the Rust test judges the report
