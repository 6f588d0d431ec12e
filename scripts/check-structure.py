#!/usr/bin/env python3
"""Kiln's structure rules (docs/conventions.md), checked on the source tree:

1. no import circle between the modules of any crate (`crate::`/`super::` paths);
2. no source file longer than MAX_LINES lines, not counting its `#[cfg(test)]` modules
   (suites under a crate's `tests/` folder and files named `tests.rs` are tests);
3. each Kiln crate depends only on the Kiln crates docs/conventions.md allows (ALLOWED below,
   read from every Cargo.toml's path dependencies, normal and build, not dev).

Prints every violation and exits 1 if there is any. Usage: scripts/check-structure.py [ROOT]
"""
import os
import re
import sys

MAX_LINES = 600

# The crates whose module graph is checked: every crate with Rust sources in the tree.
# Kiln crate -> the Kiln crates it may depend on ([dependencies] and [build-dependencies]).
ALLOWED = {
    "kiln-argv": set(),
    "kiln-http": set(),
    "kiln-hostfs": set(),
    "kiln-bpf": set(),
    "kiln-protocol": set(),
    "kiln-guest-mem": set(),
    "kiln-guest-flags": set(),
    "kiln-guest-virtio": {"kiln-guest-mem", "kiln-guest-boot", "kiln-guest-flags"},
    "kiln-guest-boot": {"kiln-guest-mem", "kiln-guest-flags"},
    "vmm": {"kiln-argv", "kiln-http", "kiln-hostfs", "kiln-bpf"},
    "jailer": {"kiln-argv", "kiln-hostfs", "kiln-bpf"},
    "kiln-guest-builder": {"kiln-protocol", "kiln-guest-flags", "kiln-hostfs"},
    "kiln-init": {"kiln-protocol", "kiln-http"},
    "kiln-worker": {"kiln-argv", "kiln-http", "kiln-hostfs", "kiln-protocol", "kiln-guest-builder"},
    "kiln-bench": {"kiln-argv"},
    # The test kit may use what it tests, but builds guests only through the builder.
    "kiln-tests": {"kiln-guest-builder", "kiln-protocol", "kiln-argv", "kiln-hostfs", "kiln-http"},
    # Freestanding guest code: only the no_std guest crates.
    "kiln-tiny": {"kiln-guest-mem", "kiln-guest-virtio", "kiln-guest-boot", "kiln-guest-flags"},
    "kiln-runtime": {"kiln-guest-mem", "kiln-guest-virtio", "kiln-guest-boot", "kiln-guest-flags", "kiln-protocol"},
    "kiln-fuzz": None,  # fuzz harnesses reach into every crate they fuzz
}
# Example functions (examples/functions/*) are written against the function runtime only.
FUNCTION_DEPS = {"kiln-runtime"}

SKIP_DIRS = {"target", ".git", "corpus", "artifacts", "node_modules"}


def rust_files(root):
    for dp, dn, fn in os.walk(root):
        dn[:] = [d for d in dn if d not in SKIP_DIRS]
        for f in fn:
            if f.endswith(".rs"):
                yield os.path.join(dp, f)


def strip_test_modules(src):
    """Source without `#[cfg(test)]` items (modules, functions, impls) and comments."""
    lines = src.split("\n")
    out = []
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("#[cfg(test)]"):
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("#["):
                j += 1
            if j < len(lines) and re.match(r"\s*(pub(\(\w+\))?\s+)?mod \w+;", lines[j]):
                i = j + 1
                continue
            if j < len(lines) and "{" in lines[j]:
                depth = 0
                while j < len(lines):
                    depth += lines[j].count("{") - lines[j].count("}")
                    j += 1
                    if depth <= 0:
                        break
                i = j
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def code_lines(src):
    return len(strip_test_modules(src).rstrip("\n").split("\n"))


def is_package(d):
    toml = os.path.join(d, "Cargo.toml")
    return os.path.isfile(toml) and "[package]" in open(toml).read()


def crate_roots(root):
    """(package name, src dir) of every crate with a Cargo.toml and a src/ folder."""
    for dp, dn, fn in os.walk(root):
        dn[:] = [d for d in dn if d not in SKIP_DIRS]
        if "Cargo.toml" in fn and os.path.isdir(os.path.join(dp, "src")):
            toml = open(os.path.join(dp, "Cargo.toml")).read()
            m = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', toml, re.M | re.S)
            if m:
                yield m.group(1), dp


def path_deps(crate_dir):
    """Kiln crates named as path dependencies outside [dev-dependencies]."""
    toml = open(os.path.join(crate_dir, "Cargo.toml")).read()
    deps = set()
    section = None
    for line in toml.split("\n"):
        s = line.strip()
        if s.startswith("["):
            section = s.strip("[]")
            continue
        if section in ("dependencies", "build-dependencies") or (
            section and section.startswith("target.") and section.endswith(".dependencies")
        ):
            m = re.match(r'([\w-]+)\s*=\s*\{[^}]*path\s*=\s*"([^"]+)"', s)
            if m:
                target = os.path.normpath(os.path.join(crate_dir, m.group(2)))
                tt = open(os.path.join(target, "Cargo.toml")).read()
                n = re.search(r'^name\s*=\s*"([^"]+)"', tt, re.M)
                deps.add(n.group(1) if n else m.group(1))
    return deps


def module_graph(src_dir):
    files = {}
    for p in rust_files(src_dir):
        rel = os.path.relpath(p, src_dir)[:-3]
        parts = rel.split(os.sep)
        if parts[0] == "bin":
            continue  # each binary is its own crate root
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        files[tuple(parts)] = p

    def resolve(path):
        for i in range(len(path), 0, -1):
            if tuple(path[:i]) in files:
                return tuple(path[:i])
        return None

    edges = {m: set() for m in files}
    for m, p in files.items():
        if m and m[-1] == "tests":
            continue
        src = strip_test_modules(open(p).read())
        src = re.sub(r"//.*", "", src)
        refs = []
        for mm in re.finditer(r"\bcrate::([\w:]+)(::\{([^;]*?)\})?", src, re.S):
            base = [x for x in mm.group(1).split("::") if x]
            refs.append(base)
            if mm.group(3):
                for item in mm.group(3).split(","):
                    item = item.strip().split(" as ")[0].strip("{} \n")
                    if item and item != "self":
                        refs.append(base + [x for x in item.split("::") if x])
        for mm in re.finditer(r"\b((?:super::)+)([\w:]+)", src):
            ups = mm.group(1).count("super::")
            parent = list(m)[: max(0, len(m) - ups)]
            refs.append(parent + [x for x in mm.group(2).split("::") if x])
        for t in refs:
            r = resolve(t)
            if r is None or r == m:
                continue
            if len(r) < len(m) and m[: len(r)] == r:
                continue  # a module naming its own ancestor's items is not a cycle edge
            edges[m].add(r)
    return edges


def cycles(edges):
    sys.setrecursionlimit(100000)
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    problems = []
    crates = dict()
    for name, d in crate_roots(root):
        crates[name] = d
    for name, d in sorted(crates.items()):
        edges = module_graph(os.path.join(d, "src"))
        for comp in cycles(edges):
            shown = ", ".join("::".join(x) or "crate" for x in comp)
            problems.append(f"{os.path.relpath(d, root)}: import circle between modules {shown}")
        in_examples = os.path.relpath(d, root).startswith(os.path.join("examples", "functions"))
        allowed = FUNCTION_DEPS if in_examples else ALLOWED.get(name, "unknown")
        deps = path_deps(d)
        if allowed == "unknown":
            problems.append(f"{os.path.relpath(d, root)}: crate {name} is not in the dependency table (scripts/check-structure.py, docs/conventions.md)")
        elif allowed is not None:
            for dep in sorted(deps - allowed):
                problems.append(f"{os.path.relpath(d, root)}: {name} may not depend on {dep} (docs/conventions.md)")
    for p in rust_files(root):
        rel = os.path.relpath(p, root)
        parts = rel.split(os.sep)
        # Test suites (a crate's tests/ folder, tests.rs modules) are tests.
        if os.path.basename(p) == "tests.rs" or any(
            parts[i] == "tests" and is_package(os.path.join(root, *parts[:i]))
            for i in range(len(parts) - 1)
        ):
            continue
        n = code_lines(open(p).read())
        if n > MAX_LINES:
            problems.append(f"{rel}: {n} lines without its tests (at most {MAX_LINES}: split it by concept)")
    for p in problems:
        print(p)
    print(f"structure: {len(crates)} crates checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
