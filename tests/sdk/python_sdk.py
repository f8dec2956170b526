"""segment-analytics-python or rudder-sdk-python (gzip on, its default) against Junction: sends
the fixture's calls, flushes, reports the messageIds it sent.
Usage: .venv/bin/python python_sdk.py segment|rudder < fixture.json"""

import sys
from importlib.metadata import version

from sdk_common import deadline, kwargs_of, read_fixture, report

# The two SDKs share their API (rudder-sdk-python is a fork); only the package differs.
PACKAGES = {"segment": "segment-analytics-python", "rudder": "rudder-sdk-python"}


def client_class(which):
    if which == "segment":
        from segment.analytics import Client
    else:
        from rudderstack.analytics import Client
    return Client


def main(which):
    name = f"{which}-python"
    deadline(45, name)
    fx = read_fixture()
    errors = []

    def on_error(e, batch):
        errors.append(f"{type(e).__name__}: {e} (batch of {len(batch)})")

    client = client_class(which)(
        write_key=fx["writeKey"],
        host=fx["host"],
        on_error=on_error,
        max_retries=2,
        upload_interval=0.2,
        timeout=10,
    )
    sent = []
    for call in fx["calls"]:
        kind, kwargs = kwargs_of(call)
        ok, msg = getattr(client, kind)(**kwargs)
        if not ok:
            errors.append(f"{kind}: not queued")
        sent.append({"type": kind, "messageId": msg["messageId"]})
    client.flush()
    client.join()
    return report(
        {
            "sdk": name,
            "library": {"name": "analytics-python", "version": version(PACKAGES[which])},
            "sent": sent,
            "errors": errors,
        }
    )


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in PACKAGES:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
