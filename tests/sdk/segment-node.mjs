// @segment/analytics-node against Junction: sends the fixture's calls, flushes, reports the
// messageIds it sent. Usage: node segment-node.mjs < fixture.json
import { Analytics } from '@segment/analytics-node';
import { createRequire } from 'node:module';
import { readFixture, deadline, report, errText } from './common.mjs';

deadline(45_000, 'segment-node');
const version = createRequire(import.meta.url)('@segment/analytics-node/package.json').version;
const fx = readFixture();
const errors = [];
const responses = [];
const analytics = new Analytics({
  writeKey: fx.writeKey,
  host: fx.host,
  flushAt: 100,
  flushInterval: 200,
  maxRetries: 2,
});
analytics.on('error', (e) => errors.push(`emitter: ${errText(e.reason ?? e)}`));
analytics.on('http_request', (r) => responses.push({ url: r.url, method: r.method, bytes: r.body?.length }));

const methods = { identify: 1, track: 1, page: 1, screen: 1, group: 1, alias: 1 };
const pending = fx.calls.map(({ type, ...params }) => {
  if (!methods[type]) throw new Error(`unknown call type ${type}`);
  return new Promise((resolve) => {
    analytics[type](params, (err, ctx) => {
      if (err) errors.push(`${type}: ${errText(err)}`);
      resolve({ type, messageId: ctx?.event?.messageId ?? null });
    });
  });
});
const sent = await Promise.all(pending);
await analytics.closeAndFlush({ timeout: 20_000 });
report({ sdk: 'segment-node', library: { name: '@segment/analytics-node', version }, sent, requests: responses, errors });
