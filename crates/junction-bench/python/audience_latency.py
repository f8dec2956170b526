"""Event -> `Audience Entered` in the log: latency probe (Compute benchmark).

Sends, per probe, one batch that makes a fresh user enter the audience `a1` of
`configs/compute-40-definitions.toml` (`count(event = "Product Clicked") >= 2`), and times
from the batch's 200 until the derived `Audience Entered` for that user appears on the live
debugger stream (published once it is durable in the log). Prints one JSON object.

Usage: python3 audience_latency.py --url http://127.0.0.1:18088 --write-key K --token T [--probes 300]
"""

import argparse
import json
import statistics
import threading
import time
import uuid

import requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--write-key", required=True)
    ap.add_argument("--token", required=True, help="a token with events:read")
    ap.add_argument("--probes", type=int, default=300)
    ap.add_argument("--gap-ms", type=float, default=20)
    args = ap.parse_args()

    arrived = {}
    skipped = [0]
    ready = threading.Event()

    def listen():
        with requests.get(
            f"{args.url}/api/v1/debugger/events?source=junction",
            headers={"Authorization": f"Bearer {args.token}"},
            stream=True,
            timeout=600,
        ) as r:
            r.raise_for_status()
            ready.set()
            for line in r.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                now = time.monotonic()
                data = json.loads(line[5:])
                # The stream skips what a slow reader missed, and says how much.
                skipped[0] += data.get("skipped", 0)
                ev = data.get("event") or {}
                if ev.get("event") == "Audience Entered" and ev.get("properties", {}).get("audience_key") == "a1":
                    arrived.setdefault(ev.get("userId"), now)

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    time.sleep(0.2)
    session = requests.Session()
    session.auth = (args.write_key, "")
    sent = {}
    run = uuid.uuid4().hex[:8]
    for i in range(args.probes):
        user = f"probe-{run}-{i}"
        batch = [{"type": "track", "userId": user, "event": "Product Clicked", "properties": {"price": 1}} for _ in range(2)]
        r = session.post(f"{args.url}/v1/batch", json={"batch": batch}, timeout=10)
        r.raise_for_status()
        sent[user] = time.monotonic()
        time.sleep(args.gap_ms / 1000)
    deadline = time.monotonic() + 30
    while len([u for u in sent if u in arrived]) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    lat = sorted((arrived[u] - t) * 1000 for u, t in sent.items() if u in arrived)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
    print(json.dumps({
        "probes": len(sent),
        "entered": len(lat),
        "debugger_skipped": skipped[0],
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "max_ms": lat[-1] if lat else None,
        "mean_ms": statistics.mean(lat) if lat else None,
    }))


if __name__ == "__main__":
    main()
