// The page's script, bundled with esbuild into bundle.js (one file: no CDN, no chunk loading).
// Loads @segment/analytics-next from npm against Junction, whose URL and write key come in the
// query string (?junction=http://127.0.0.1:PORT&writeKey=...), then sends page, track and
// identify and publishes the outcome in window.__junction (awaited by browser.mjs).
import { AnalyticsBrowser } from '@segment/analytics-next';

const params = new URLSearchParams(window.location.search);
const cdnURL = params.get('junction');
const writeKey = params.get('writeKey');

const state = { done: false, loaded: false, errors: [], results: [], anonymousId: null, userId: null };
window.__junction = state;

function ctxSummary(ctx) {
  const e = ctx?.event ?? {};
  const failed = ctx?.failedDelivery?.();
  return {
    type: e.type,
    messageId: e.messageId,
    anonymousId: e.anonymousId ?? null,
    userId: e.userId ?? null,
    failedDelivery: failed ? String(failed.reason?.message ?? failed.reason) : null,
  };
}

async function main() {
  // cdnURL: the SDK fetches {cdnURL}/v1/projects/{writeKey}/settings, and Junction answers
  // with integrations["Segment.io"].apiHost = "<host:port>/v1", protocol "http".
  const analytics = AnalyticsBrowser.load({ writeKey, cdnURL });
  analytics.on('error', (e) => state.errors.push(`error event: ${e?.code ?? ''} ${e?.reason?.message ?? e}`));
  const loading = analytics.then(([instance]) => {
    state.loaded = true;
    return instance;
  });
  // One after the other: the SDK replays calls made before it loaded in new tasks, so an
  // identify() issued together with them could stamp its userId on the earlier events.
  const contexts = [];
  contexts.push(await analytics.page());
  contexts.push(
    await analytics.track('Browser Clicked', {
      button: 'Kaufen ✓',
      price: 9.99,
      items: [{ sku: 'b-1', qty: 1 }],
      nested: { level1: { level2: 'ünïcödé 日本' } },
    }),
  );
  contexts.push(
    await analytics.identify('user-b1', { email: 'b1@example.com', name: 'Zoë Browser 🚀', prefs: { lang: 'de', tz: 'Europe/Zurich' } }),
  );
  const instance = await loading;
  state.results = contexts.map(ctxSummary);
  state.anonymousId = instance.user().anonymousId();
  state.userId = instance.user().id();
}

main()
  .catch((e) => state.errors.push(`exception: ${e?.stack ?? e}`))
  .finally(() => {
    state.done = true;
  });
