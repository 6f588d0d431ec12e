#!/usr/bin/env bash
# Makes ./rootfs: a minimal root file system for this Python Lambda function's guest, from
# this (Debian, x86-64) host: its python3 with the standard library, the shared libraries they
# load, and the Python runtime interface client (awslambdaric, from PyPI, the version pinned in
# tests/python/requirements.txt). kiln-init starts it as `python3 -m awslambdaric app.handler`.
#
# Another way to get a root file system: export AWS's own base image, whose
# /var/runtime/bootstrap kiln-init then starts instead:
#   docker export "$(docker create public.ecr.aws/lambda/python:3.11)" | tar -x -C rootfs
#
# Usage: examples/functions/lambda-python/make-rootfs.sh [DIR]   (default DIR: ./rootfs; then
# `kiln build lambda-python`). Set KILN_REQUIREMENTS to read the pinned version from another
# copy of tests/python/requirements.txt; PIP_CACHE_DIR is honoured.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
requirements="${KILN_REQUIREMENTS:-$here/../../../tests/python/requirements.txt}"
root="${1:-$here/rootfs}"
python=/usr/bin/python3
[ -x "$python" ] || { echo "make-rootfs: $python is missing (apt-get install python3 python3-venv)" >&2; exit 1; }
version="$("$python" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')"
[ "$version" = 3.11 ] || echo "make-rootfs: warning: the host's Python is $version; kiln.json says python3.11" >&2
[ -f "$requirements" ] || { echo "make-rootfs: $requirements is missing (set KILN_REQUIREMENTS)" >&2; exit 1; }
awslambdaric="$(grep -E '^awslambdaric==' "$requirements")"
deps="$(grep -E '^(simplejson|snapshot-restore-py)==' "$requirements")"

rm -rf "$root"
mkdir -p "$root/usr/bin" "$root/usr/lib" "$root/lib64"
real="$(readlink -f "$python")"
cp "$real" "$root/usr/bin/python$version"
ln -s "python$version" "$root/usr/bin/python3"
stdlib="/usr/lib/python$version"
# The standard library, without its tests and the GUI and packaging tools a function does not use.
tar -C / -cf - \
    --exclude="${stdlib#/}/test" --exclude="${stdlib#/}/idlelib" --exclude="${stdlib#/}/tkinter" \
    --exclude="${stdlib#/}/ensurepip" --exclude='__pycache__' "${stdlib#/}" | tar -C "$root" -xf -

# awslambdaric and its dependencies, as pip installs them (wheels for this Python).
site="$root/usr/lib/python3/dist-packages"
mkdir -p "$site"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-compile --target "$site" \
    "$awslambdaric" $deps

# Every shared library the interpreter and the extension modules load, at the same path.
libs() { ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}'; }
{
    libs "$real"
    find "$root" -name '*.so*' -type f | while read -r so; do libs "$so"; done
} | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
size="$(du -sh "$root" | cut -f1)"
echo "make-rootfs: $root ($size): python$version, awslambdaric; check: chroot $root /usr/bin/python3 -c 'import awslambdaric'" >&2
