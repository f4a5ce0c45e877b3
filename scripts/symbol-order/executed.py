#!/usr/bin/env python3
"""Functions of `binary` (a path suffix) that ran in callgrind profiles,
most run (self cost, summed over the profiles) first, each once
(callgrind's `'N` recursion marks dropped), and none named in the file of
`--skip` (one function per line). Usage:
executed.py BINARY_SUFFIX CALLGRIND_OUT... [--skip FILE]"""
import sys, re, collections
args = sys.argv[1:]
skip = set()
if "--skip" in args:
    i = args.index("--skip")
    skip = set(l.strip() for l in open(args[i + 1]) if l.strip() and not l.startswith("#"))
    del args[i:i + 2]
binary, paths = args[0], args[1:]
cost = collections.Counter()
def resolve(table, val):
    m = re.match(r"\((\d+)\)(?: (.*))?", val)
    if not m: return val
    if m.group(2) is not None: table[m.group(1)] = m.group(2)
    return table.get(m.group(1), "?")
def read(path):
    names = {}      # id -> name for fn (compressed names)
    obs = {}
    cur_ob = None; cur_fn = None; in_call = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("ob="):
            cur_ob = resolve(obs, line[3:]); continue
        if line.startswith("fl=") or line.startswith("fi=") or line.startswith("fe="):
            continue
        if line.startswith("fn="):
            cur_fn = (cur_ob, resolve(names, line[3:])); cost.setdefault(cur_fn, 0); in_call = False; continue
        if line.startswith("cob="):
            resolve(obs, line[4:]); continue
        if line.startswith("cfn="):
            resolve(names, line[4:]); continue
        if line.startswith("calls="):
            in_call = True; continue
        if line and (line[0].isdigit() or line[0] in "+-*"):
            if in_call: in_call = False; continue
            parts = line.split()
            if len(parts) >= 2 and cur_fn: cost[cur_fn] += int(parts[1])
for p in paths:
    read(p)
by = collections.Counter()
for (ob, fn), c in cost.items():
    if ob and ob.endswith(binary):
        by[re.sub(r"'\d+$", "", fn)] += c
for fn, _ in sorted(by.items(), key=lambda x: -x[1]):
    if fn not in skip:
        print(fn)
