"""Helpers shared by the Python SDK scripts: read the fixture, map calls, enforce a deadline."""

import copy
import json
import os
import sys
import threading
from datetime import datetime


def read_fixture():
    fixture = json.load(sys.stdin)
    if not fixture.get("host") or not fixture.get("writeKey") or not isinstance(fixture.get("calls"), list):
        raise SystemExit("fixture needs host, writeKey and calls[]")
    return fixture


def deadline(seconds, what):
    """Exits 3 (from a timer thread, the process as a whole) when not done in time."""

    def fire():
        sys.stderr.write(f"{what}: did not finish within {seconds} s\n")
        sys.stderr.flush()
        os._exit(3)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


def kwargs_of(call):
    """The SDK keyword arguments (snake_case) of one fixture call, deep-copied."""
    call = copy.deepcopy(call)
    kind = call.pop("type")
    names = {
        "userId": "user_id",
        "anonymousId": "anonymous_id",
        "messageId": "message_id",
        "previousId": "previous_id",
        "groupId": "group_id",
    }
    kwargs = {names.get(k, k): v for k, v in call.items()}
    if "timestamp" in kwargs:
        kwargs["timestamp"] = datetime.fromisoformat(kwargs["timestamp"].replace("Z", "+00:00"))
    return kind, kwargs


def report(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    return 1 if obj["errors"] else 0
