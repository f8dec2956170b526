// @rudderstack/rudder-sdk-node against Junction (gzip on, its default): sends the fixture's
// calls, flushes, reports the messageIds it sent. Usage: node rudder-node.mjs < fixture.json
import Analytics from '@rudderstack/rudder-sdk-node';
import { createRequire } from 'node:module';
import { gunzipSync } from 'node:zlib';
import { readFixture, deadline, report, errText } from './common.mjs';

deadline(45_000, 'rudder-node');
const version = createRequire(import.meta.url)('@rudderstack/rudder-sdk-node/package.json').version;
const fx = readFixture();
const errors = [];
let gzipped = false;
const client = new Analytics(fx.writeKey, {
  dataPlaneUrl: fx.host,
  flushAt: 100,
  flushInterval: 200,
  retryCount: 1,
  logLevel: 'error',
  errorHandler: (e) => errors.push(`errorHandler: ${errText(e)}`),
});

const sent = [];
const delivered = fx.calls.map(({ type, timestamp, ...params }, index) => {
  if (!['identify', 'track', 'page', 'screen', 'group', 'alias'].includes(type)) {
    throw new Error(`unknown call type ${type}`);
  }
  if (timestamp) params.timestamp = new Date(timestamp);
  return new Promise((resolve) => {
    client[type](params, (err, data) => {
      if (err) errors.push(`${type}: ${errText(err)}`);
      // `data` is the request body the SDK posted (gzipped when gzip is on): read back the
      // messageId it gave this call (each type appears once in a fixture).
      let messageId = params.messageId ?? null;
      try {
        const body = Buffer.isBuffer(data) ? JSON.parse(gunzipSync(data)) : data;
        const item = body?.batch?.find((m) => m.type === type);
        messageId = item?.messageId ?? messageId;
        if (Buffer.isBuffer(data)) gzipped = true;
      } catch (e) {
        errors.push(`${type}: cannot read the posted batch back: ${errText(e)}`);
      }
      sent[index] = { type, messageId }; // in call order, whatever order the callbacks come in
      resolve();
    });
  });
});
await client.flush();
await Promise.all(delivered);
report({ sdk: 'rudder-node', library: { name: 'analytics-node', version }, sent, gzipped, errors });
