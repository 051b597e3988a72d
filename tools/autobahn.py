#!/usr/bin/env python3
"""autobahn.py: run the Autobahn|Testsuite cases against a WebSocket echo URL with kosoku.

Usage: tools/autobahn.py URL [--exclude CASE]... [--include CASE]... [--concurrency N]
                            [--json PATH] [--timings]

  URL            an echo endpoint, e.g. ws://127.0.0.1:8080/echo (volley --echo-path /echo)
  --include      case id or glob to run (repeatable; default: the whole suite)
  --exclude      case id or glob to leave out (repeatable)
  --concurrency  cases run in parallel (default 2: one per core here)
  --json PATH    write [{"id", "behavior", "behavior_close", "result", "duration_ms"}]
                 for every case
  --timings      also print one line per case group (9.1, 9.2, ...): cases, the sum of
                 their run times and the slowest (kosoku's own per-case durations)

Prints one line per section (1, 2, ... 13) with its verdict counts, then every case whose
verdict is not OK, NON-STRICT or INFORMATIONAL (or whose close verdict is not OK or
INFORMATIONAL). Exits 0 when there is none, 1 otherwise, 2 on a usage error.
Needs the `kosoku` package (pip install kosoku; tools/test.sh installs it).
"""
import argparse
import asyncio
import collections
import json
import sys

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}
ACCEPTED_CLOSE = {"OK", "INFORMATIONAL"}


def section_key(case_id):
    return tuple(int(p) for p in case_id.split("."))


async def run(args):
    from kosoku import FailureError, run_fuzzingclient
    from kosoku._report import case_to_dict

    try:
        results = await run_fuzzingclient(
            args.url, args.include, args.exclude, concurrency=args.concurrency
        )
    except FailureError as failure:
        results = failure.results
    rows = []
    for r in results:
        detail = case_to_dict(r)
        rows.append(
            {
                "id": r.case_id,
                "behavior": r.behavior.value,
                "behavior_close": r.behavior_close.value,
                "result": str(detail.get("result", ""))[:300],
                "duration_ms": r.duration,
            }
        )
    rows.sort(key=lambda row: section_key(row["id"]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--include", action="append")
    parser.add_argument("--exclude", action="append")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--timings", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    sections = collections.OrderedDict()
    for row in rows:
        major = row["id"].split(".")[0]
        sections.setdefault(major, collections.Counter())[row["behavior"]] += 1
    for major, counts in sections.items():
        total = sum(counts.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"section {major}: {total} cases: {parts}")
    if args.timings:
        groups = collections.OrderedDict()
        for row in rows:
            group = ".".join(row["id"].split(".")[:2])
            groups.setdefault(group, []).append(row)
        for group, members in groups.items():
            total_ms = sum(m["duration_ms"] for m in members)
            slowest = max(members, key=lambda m: m["duration_ms"])
            print(
                f"group {group}: {len(members)} cases, {total_ms} ms in all, "
                f"slowest {slowest['id']} {slowest['duration_ms']} ms"
            )
    bad = [
        row
        for row in rows
        if row["behavior"] not in ACCEPTED or row["behavior_close"] not in ACCEPTED_CLOSE
    ]
    for row in bad:
        print(f"NOT OK {row['id']}: {row['behavior']} / {row['behavior_close']}: {row['result']}")
    print(f"{len(rows)} cases, {len(bad)} not OK")
    if not rows:
        print("no case ran", file=sys.stderr)
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
