#!/usr/bin/env python3
"""A plain 1Password -> Devo poller: the reference peer of the bench.

This is the collector the way a typical team would write it in an
afternoon: one process, `requests` and `json`, a JSON state file holding
each endpoint's cursor. The bench (`bench --side-by-side`) runs it and the
harness's `run` process on the same data against the same emulators and
compares their CPU time per delivered event, peak RSS and wall time. It is
kept deliberately ordinary, not tuned: it stands for what the harness is
measured against, so it must not be a straw man either (see the gzip level
below).

For every endpoint (auditevents, itemusages, signinattempts) it asks for
pages of up to 1000 events, the first from `--start-time`, then by cursor;
re-serialises each event as one JSON line, sends the lines gzip-compressed
to Devo's `stream` endpoint under the same tag the collector uses, and
saves the cursor once Devo accepted the page. It stops when every endpoint
answered `has_more: false`. A run that dies part-way resumes from the state
file and resends at most the page in flight.

    OP_TOKEN=... DEVO_TOKEN=... python3 python_poller.py \
        --base-url http://127.0.0.1:PORT --devo-url http://127.0.0.1:PORT \
        --devo-domain bench --state state.json --start-time 2026-11-24T00:00:00Z

Needs Python 3.8+ and `requests` (`pip install requests`). Tokens come from
the environment so they never show in the process list.
"""

import argparse
import gzip
import json
import os
import sys

import requests

# service: (1Password endpoint, Devo tag), as the collector's defaults
# (src/service.rs) and Devo's own 1Password collector.
SERVICES = {
    "audit": ("auditevents", "auth.agilebits.onepassword.audit"),
    "item_usage": ("itemusages", "auth.agilebits.onepassword.itemusage"),
    "sign_in_attempts": ("signinattempts", "auth.agilebits.onepassword.signinattempt"),
}


def load_state(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def save_state(path, state):
    # Written beside and renamed, so a crash leaves the old file or the new
    # one, never half of one.
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def fetch_page(session, args, endpoint, cursor):
    if cursor:
        body = {"cursor": cursor}
    else:
        body = {"limit": args.limit, "start_time": args.start_time}
    url = f"{args.base_url}/api/{args.api_version}/{endpoint}"
    response = session.post(url, json=body, headers={"Authorization": f"Bearer {args.op_token}"}, timeout=30)
    response.raise_for_status()
    return response.json()


def send_to_devo(session, args, tag, events):
    lines = "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in events)
    # Level 1, the level the collector uses (flate2's fast): gzip's default
    # of 9 would make this peer several times slower for the same job.
    body = gzip.compress(lines.encode("utf-8"), compresslevel=1)
    url = f"{args.devo_url}/stream/{args.devo_domain}/token!{args.devo_token}/{args.devo_host}/{tag}"
    headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip"}
    response = session.post(url, data=body, headers=headers, timeout=30)
    response.raise_for_status()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="1Password events server")
    parser.add_argument("--devo-url", required=True, help="Devo HTTP endpoint")
    parser.add_argument("--devo-domain", required=True)
    parser.add_argument("--devo-host", default="onepassword-collector")
    parser.add_argument("--state", required=True, help="JSON file with each endpoint's cursor")
    parser.add_argument("--start-time", required=True, help="RFC 3339 time of the first page")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--api-version", default="v2")
    args = parser.parse_args()
    args.op_token = os.environ["OP_TOKEN"]
    args.devo_token = os.environ["DEVO_TOKEN"]

    state = load_state(args.state)
    session = requests.Session()
    sent = {}
    for service, (endpoint, tag) in SERVICES.items():
        sent[service] = 0
        while True:
            page = fetch_page(session, args, endpoint, state.get(service, {}).get("cursor"))
            items = page["items"]
            if items:
                send_to_devo(session, args, tag, items)
                sent[service] += len(items)
            # Only after Devo accepted the page: a crash before this line
            # resends the page, it never skips one.
            state[service] = {"cursor": page["cursor"]}
            save_state(args.state, state)
            if not page["has_more"]:
                break
    print("sent " + " ".join(f"{s}={n}" for s, n in sent.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
