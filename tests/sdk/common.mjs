// Helpers shared by the Node SDK scripts: read the fixture, enforce a deadline, report.
import { readFileSync } from 'node:fs';

export function readFixture() {
  const text = readFileSync(0, 'utf8');
  const fixture = JSON.parse(text);
  if (!fixture.host || !fixture.writeKey || !Array.isArray(fixture.calls)) {
    throw new Error('fixture needs host, writeKey and calls[]');
  }
  return fixture;
}

/** Exits 3 with a message when the script has not finished within `ms`. */
export function deadline(ms, what) {
  const t = setTimeout(() => {
    process.stderr.write(`${what}: did not finish within ${ms} ms\n`);
    process.exit(3);
  }, ms);
  t.unref();
}

/** Prints the one-line JSON report and sets the exit code (1 when errors were seen). */
export function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
  process.exitCode = obj.errors.length ? 1 : 0;
}

export function errText(e) {
  if (!e) return 'unknown error';
  const status = e.response?.status ?? e.code ?? '';
  return `${e.name ?? 'Error'}: ${e.message ?? String(e)}${status ? ` (${status})` : ''}`;
}
