#!/usr/bin/env bash
# Installs the Python clients of Kiln's Lambda tests (boto3, the AWS CLI, awslambdaric; pinned
# in tests/python/requirements.txt) into a virtual environment, $KILN_CACHE/python/clients,
# with Debian's python3. Idempotent: nothing happens when the environment already holds this
# version of the requirements (a copy of the file in it says so). Downloads are cached in
# $KILN_CACHE/python/pip-cache.
source "$(dirname "$0")/lib.sh"

req="$KILN_ROOT/tests/python/requirements.txt"
venv="$KILN_CACHE/python/clients"
stamp="$venv/kiln-requirements.txt"

if cmp -s "$req" "$stamp" 2>/dev/null; then
    exit 0
fi
apt_ensure python3 python3-venv
step "Python clients for the Lambda tests (boto3, awscli, awslambdaric) into $venv"
# A venv is not relocatable (its scripts name it): build it in place; the stamp, written
# last, marks it complete.
rm -rf "$venv"
mkdir -p "$KILN_CACHE/python"
/usr/bin/python3 -m venv "$venv"
PIP_CACHE_DIR="$KILN_CACHE/python/pip-cache" "$venv/bin/pip" install \
    --quiet --disable-pip-version-check --no-input --require-virtualenv -r "$req" >&2 \
    || die "pip install -r $req failed (PyPI must be reachable on first use)"
"$venv/bin/python" -c 'import boto3, awslambdaric, awscli' \
    || die "the Python clients do not import in $venv"
cp "$req" "$stamp"
