# Shared helpers for Kiln's set-up scripts. Source it; do not run it.
# Everything here is idempotent: a second call does nothing that is already done.

set -euo pipefail

KILN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Built guest assets live outside the repo, keyed by content hash.
KILN_CACHE="${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
export KILN_ROOT KILN_CACHE

# step "message": a progress line on stderr, with the elapsed time of the script.
KILN_T0="${KILN_T0:-$(date +%s)}"
export KILN_T0
step() {
    printf '\033[1m==> [%4ss] %s\033[0m\n' "$(($(date +%s) - KILN_T0))" "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# need_root: the set-up installs Debian packages and the tests build jails.
need_root() {
    [ "$(id -u)" = 0 ] || die "this must run as root (it installs Debian packages, and the jailer needs root)"
}

# apt_ensure PKG...: install the Debian packages that are missing, once.
apt_ensure() {
    local missing=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    need_root
    step "installing Debian packages: ${missing[*]}"
    local stamp=/var/lib/apt/periodic/kiln-update-stamp
    if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +360 2>/dev/null)" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        mkdir -p "$(dirname "$stamp")" && touch "$stamp"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# musl_ensure: the Rust standard library for the workspace's target (.cargo/config.toml:
# static musl binaries), added to the toolchain once.
MUSL_TARGET=x86_64-unknown-linux-musl
musl_ensure() {
    rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET" && return 0
    step "adding the Rust target $MUSL_TARGET (once: the workspace's binaries are static musl)"
    rustup target add "$MUSL_TARGET" >&2 \
        || die "cannot add the Rust target $MUSL_TARGET (rustup target add $MUSL_TARGET): the workspace builds for it"
}

# cargo_build ARGS...: build the workspace binaries (static; see .cargo/config.toml).
cargo_build() {
    step "cargo build $*"
    (cd "$KILN_ROOT" && cargo build "$@")
}
