#!/usr/bin/env python3
"""Layout gate: no source file above the line limit, no import cycle between
modules of a crate.

A module is one source file. `A -> B` when A names a path into B
(`crate::...`, `super::...`, `self::...`). Lines that only declare or
re-export children (`mod x;`, `pub use x::...`) are not edges: they are the
parent's job, not a dependency. Test modules (`#[cfg(test)] mod tests`)
are skipped. Exit status 1 on a violation, with each one named.
"""
import os
import re
import sys

LIMIT = int(os.environ.get("CROSSMIG_MAX_LINES", "700"))
CRATES = {"wire": "wire/src", "rust-dest": "rust-dest/src", "harness": "harness/src"}


def modpath(root, f):
    rel = os.path.relpath(f, root)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_tests(text):
    m = re.search(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", text)
    return text[: m.start()] if m else text


def refs(text, me, is_parent):
    out = set()
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("//"):
            continue
        if is_parent and re.match(r"(pub(\(crate\))?\s+)?(mod\s|use\s+(self::)?\w+::)", s) and "crate::" not in s and "super::" not in s:
            continue
        for m in re.finditer(r"\b(crate|super|self)((?:::\w+)+)", s):
            head, rest = m.group(1), [p for p in m.group(2).split("::") if p]
            if head == "crate":
                base = []
            elif head == "super":
                base = list(me[:-1]) if not is_parent else list(me[:-1])
            else:
                base = list(me)
            out.add(tuple(base + rest))
        # `{a, b::c}` groups after crate::x:: are covered by the prefix match below
    return out


def main():
    bad = []
    for crate, root in CRATES.items():
        if not os.path.isdir(root):
            continue
        files = {}
        for d, _, fs in os.walk(root):
            for f in fs:
                if f.endswith(".rs"):
                    p = os.path.join(d, f)
                    files[modpath(root, p)] = p
        crate_dir = os.path.dirname(root)
        for d, _, fs in os.walk(crate_dir):
            for f in sorted(fs):
                p = os.path.join(d, f)
                if f.endswith(".rs") and "/target" not in d:
                    n = sum(1 for _ in open(p))
                    if n > LIMIT:
                        bad.append(f"{p}: {n} lines (limit {LIMIT})")
        mods = set(files)
        edges = {m: set() for m in mods}
        for m, p in files.items():
            is_parent = os.path.basename(p) in ("mod.rs", "lib.rs", "main.rs")
            for r in refs(strip_tests(open(p).read()), m, is_parent):
                # the longest module prefix of the path
                for k in range(len(r), -1, -1):
                    t = r[:k]
                    if t in mods:
                        break
                if t == m or (is_parent and t[: len(m)] == m):
                    continue
                if t[: len(m)] == m:  # a file naming its own submodule
                    continue
                if m[: len(t)] == t:  # a child naming an ancestor
                    # allowed only if the ancestor is a plain re-export hub; count as edge
                    pass
                edges[m].add(t)
        # strongly connected components (Tarjan)
        index, low, stack, on, comps, i = {}, {}, [], set(), [], [0]

        def sc(v):
            index[v] = low[v] = i[0]
            i[0] += 1
            stack.append(v)
            on.add(v)
            for w in edges[v]:
                if w not in index:
                    sc(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(comp)

        sys.setrecursionlimit(10000)
        for v in sorted(mods):
            if v not in index:
                sc(v)
        for comp in comps:
            names = sorted("::".join(c) or "<root>" for c in comp)
            bad.append(f"{crate}: import cycle between {', '.join(names)}")
    for b in bad:
        print(f"layout: {b}")
    if bad:
        sys.exit(1)
    print(f"layout: ok (no file above {LIMIT} lines, no import cycle)")


if __name__ == "__main__":
    main()
