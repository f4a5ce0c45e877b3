#!/usr/bin/env python3
"""Functions of `binary` (a path suffix) that ran in a callgrind profile,
most run (self cost) first, each once (callgrind's `'N` recursion marks
dropped). Usage: executed.py CALLGRIND_OUT BINARY_SUFFIX"""
import sys, re, collections
path, binary = sys.argv[1], sys.argv[2]
names = {}      # id -> name for fn (compressed names)
obs = {}
cost = collections.Counter()
cur_ob = None; cur_fn = None; in_call = False
def resolve(table, val):
    m = re.match(r"\((\d+)\)(?: (.*))?", val)
    if not m: return val
    if m.group(2) is not None: table[m.group(1)] = m.group(2)
    return table.get(m.group(1), "?")
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
by = collections.Counter()
for (ob, fn), c in cost.items():
    if ob and ob.endswith(binary):
        by[re.sub(r"'\d+$", "", fn)] += c
for fn, _ in sorted(by.items(), key=lambda x: -x[1]):
    print(fn)
