#!/usr/bin/env python3
"""Compares a critest (ginkgo v2) JSON report with the reviewed list of
expected failures; used by scripts/conformance.sh.

Usage: conformance-compare.py REPORT.json EXPECTED.txt

EXPECTED.txt: one spec per line, its full text as critest.sh prints it (the
ginkgo container texts and the It text, joined by spaces); '#' lines are
comments, and every spec must have a comment right above it saying why it
fails and which capability will fix it.

Exit 0 when the failures are exactly the listed ones (a listed spec that was
skipped is reported, not counted), 1 on an unexpected failure or a listed spec
that passed (remove it from the list: the list only shrinks), 2 on a malformed
list or report.
"""
import collections
import json
import sys


def load_expected(path):
    specs, comment, bad = {}, [], []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                comment = []
            elif line.startswith("#"):
                comment.append(line.lstrip("# "))
            elif not comment:
                bad.append(f"{path}:{n}: no comment above {line!r} (why it fails, what fixes it)")
            elif line in specs:
                bad.append(f"{path}:{n}: listed twice: {line!r}")
            else:
                specs[line] = " ".join(comment)
    return specs, bad


def spec_name(r):
    return (" ".join(r.get("ContainerHierarchyTexts") or []) + " " + r.get("LeafNodeText", "")).strip()


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    report, expected_path = sys.argv[1:]
    expected, bad = load_expected(expected_path)
    if bad:
        print("\n".join(bad), file=sys.stderr)
        return 2
    try:
        suites = json.load(open(report, encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"conformance: no critest report ({e})", file=sys.stderr)
        return 2
    states = {}
    skips = collections.Counter()
    for s in suites:
        cfg = s.get("SuiteConfig") or {}
        selection = ", ".join(
            f"--ginkgo.{k}={'|'.join(cfg.get(v) or [])}"
            for k, v in (("focus", "FocusStrings"), ("skip", "SkipStrings"))
            if cfg.get(v)
        )
        for r in s.get("SpecReports", []):
            if r.get("LeafNodeType") != "It":
                continue
            name, state = spec_name(r), r.get("State", "")
            states[name] = state
            if state == "skipped":
                msg = ((r.get("Failure") or {}).get("Message") or "").split("\n")[0].strip()
                if not msg:
                    msg = f"not selected ({selection})"
                skips[msg] += 1
    failed = sorted(n for n, st in states.items() if st not in ("passed", "skipped", "pending"))
    passed = sum(1 for st in states.values() if st == "passed")
    print(f"critest summary: passed {passed} · failed {len(failed)} · skipped {sum(skips.values())}")
    for msg, n in sorted(skips.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {n}: {msg}")
    unexpected = [n for n in failed if n not in expected]
    stale = [n for n in expected if states.get(n) == "passed"]
    absent = [n for n in expected if n not in states]
    for n in failed:
        if n in expected:
            print(f"  expected failure: {n}\n      why: {expected[n]}")
    for n in (x for x in expected if states.get(x) == "skipped"):
        print(f"  note: listed spec was skipped this run: {n}")
    for n in absent:
        print(f"  note: listed spec did not run (focus, or renamed upstream?): {n}")
    rc = 0
    for n in unexpected:
        print(f"  UNEXPECTED FAILURE: {n}")
        rc = 1
    for n in stale:
        print(f"  NOW PASSES, remove it from {expected_path}: {n}")
        rc = 1
    print("conformance: " + ("ok (every failure is on the reviewed list)" if rc == 0 else "FAILED"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
