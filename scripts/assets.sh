#!/usr/bin/env bash
# Builds Kiln's Linux guest assets from Debian's packages only, and caches them outside the
# repo (guest/kernel/README.md explains the kernel and the cache):
#
#   $KILN_CACHE/assets/current/ -> vmlinux  bzImage  config  initramfs.cpio  rootfs.ext4
#
# - kernel-<hash>/  vmlinux, bzImage, config: keyed by guest/kernel/kiln.config, the patches
#                   in guest/kernel/patches/, the linux-source-6.1 version, gcc's version
#                   and KERNEL_RECIPE below;
# - rootfs-<hash>/  initramfs.cpio, rootfs.ext4: keyed by the kiln-init binary and
#                   ROOTFS_RECIPE below;
# - <k>-<r>/        hard links to both, which `current` points at.
#
# Idempotent: a second run only prints that everything is cached. The unpacked, patched
# kernel tree and its objects stay in $KILN_CACHE/build/ for incremental rebuilds.
# Usage: scripts/assets.sh   (root only to install missing Debian packages)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bump when the way the kernel or the root images are built changes without a change of
# their inputs (so that stale cache entries are not reused).
KERNEL_RECIPE=1
ROOTFS_RECIPE=1
ROOTFS_SIZE_MIB=16

KERNEL_DIR="$KILN_ROOT/guest/kernel"
FRAGMENT="$KERNEL_DIR/kiln.config"
ASSETS="$KILN_CACHE/assets"
BUILD="$KILN_CACHE/build"
KARCH=x86_64

apt_ensure linux-source-6.1 build-essential bc bison flex libelf-dev lz4 cpio xz-utils \
    e2fsprogs qemu-system-x86 iproute2 util-linux

mkdir -p "$ASSETS" "$BUILD"
exec 9>"$KILN_CACHE/assets.lock"
if ! flock -n 9; then
    step "waiting for another scripts/assets.sh to finish (lock $KILN_CACHE/assets.lock)"
    flock 9
fi

shopt -s nullglob
PATCHES=("$KERNEL_DIR"/patches/*.patch)
shopt -u nullglob
[ -f "$FRAGMENT" ] || die "kernel config fragment $FRAGMENT is missing"

SRC_VERSION="$(dpkg-query -W -f='${Version}' linux-source-6.1)"
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
[ -f "$SRC_TARBALL" ] || die "$SRC_TARBALL is missing although linux-source-6.1 is installed"

# key INPUT...: a short hash of the inputs (values, or files hashed by name and content).
key() {
    local x
    for x in "$@"; do
        if [ -f "$x" ]; then
            printf 'file %s\n' "$(basename "$x")"
            sha256sum <"$x"
        else
            printf 'value %s\n' "$x"
        fi
    done | sha256sum | cut -c1-16
}

# publish TMPDIR FINAL: atomically move a finished build to its cache directory.
publish() {
    if [ -e "$2" ]; then
        rm -rf "$1" # another run finished the same key first
    else
        mv -T "$1" "$2"
    fi
}

# ---------------------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------------------
KERNEL_KEY="$(key "recipe $KERNEL_RECIPE" "arch $KARCH" "linux-source-6.1 $SRC_VERSION" \
    "$(gcc --version | head -n1)" "$FRAGMENT" "${PATCHES[@]}")"
KERNEL_OUT="$ASSETS/kernel-$KERNEL_KEY"
SRC="$BUILD/linux-source-$SRC_VERSION"
OBJ="$BUILD/obj-$KARCH"

kmake() {
    make -C "$SRC" O="$OBJ" ARCH="$KARCH" "$@"
}

unpack_source() {
    step "unpacking $SRC_TARBALL ($SRC_VERSION) into $SRC"
    # The tarball's old timestamps would hide source changes from make: objects go too.
    rm -rf "$SRC" "$SRC.tmp" "$OBJ"
    mkdir -p "$SRC.tmp"
    tar -xJf "$SRC_TARBALL" -C "$SRC.tmp" --strip-components=1
    mkdir "$SRC.tmp/.kiln-patches"
    mv -T "$SRC.tmp" "$SRC"
}

# Brings $SRC to "pristine + exactly our patches", reverting what an earlier run applied.
sync_patches() {
    local applied="$SRC/.kiln-patches" want=() have=() p i
    for p in "${PATCHES[@]}"; do want+=("$(basename "$p"):$(sha256sum <"$p" | cut -c1-16)"); done
    [ -f "$applied/list" ] && mapfile -t have <"$applied/list"
    [ "${want[*]:-}" = "${have[*]:-}" ] && return 0
    for ((i = ${#have[@]} - 1; i >= 0; i--)); do
        step "reverting ${have[i]%%:*} (the patch set changed)"
        if ! patch -s -R -p1 --dry-run -d "$SRC" <"$applied/$i.patch" >/dev/null 2>&1 ||
            ! patch -s -R -p1 -d "$SRC" <"$applied/$i.patch"; then
            step "cannot revert it cleanly: starting from a fresh source tree"
            unpack_source
            break
        fi
    done
    rm -f "$applied"/*
    for i in "${!PATCHES[@]}"; do
        step "applying ${PATCHES[i]#"$KILN_ROOT"/}"
        # Dry run first: a patch that fails half-way would leave the tree half-patched.
        patch -s -N -p1 --dry-run -d "$SRC" <"${PATCHES[i]}" >&2 ||
            die "patch ${PATCHES[i]} does not apply to linux-source-6.1 $SRC_VERSION"
        patch -s -N -p1 -d "$SRC" <"${PATCHES[i]}"
        cp "${PATCHES[i]}" "$applied/$i.patch"
        printf '%s\n' "${want[i]}" >>"$applied/list"
    done
}

# Fails naming every option of the fragment that the merge did not keep.
verify_config() {
    local line opt val dropped=()
    while IFS= read -r line; do
        case "$line" in
        "# CONFIG_"*" is not set")
            opt="${line#\# }"
            opt="${opt%% *}"
            if grep -qE "^$opt=" "$OBJ/.config"; then
                dropped+=("$line (it is $(grep -E "^$opt=" "$OBJ/.config"))")
            fi
            ;;
        CONFIG_*=*)
            opt="${line%%=*}"
            val="$(grep -E "^$opt=" "$OBJ/.config" || grep -E "^# $opt is not set" "$OBJ/.config" || true)"
            [ "$val" = "$line" ] || dropped+=("$line (it is ${val:-absent: a dependency is missing or the name is wrong})")
            ;;
        esac
    done <"$FRAGMENT"
    if [ ${#dropped[@]} -gt 0 ]; then
        printf '  %s\n' "${dropped[@]}" >&2
        die "the kernel config lost ${#dropped[@]} option(s) of $FRAGMENT (listed above)"
    fi
}

# progress: reads kbuild's output, prints a line every 250 built files, and passes on
# compiler warnings and errors.
progress() {
    local line n=0
    while IFS= read -r line; do
        case "$line" in
        *"warning:"* | *"error:"* | *"Error "*) printf '    %s\n' "$line" >&2 ;;
        "  "[A-Z]*)
            n=$((n + 1))
            if [ $((n % 250)) -eq 0 ]; then
                printf '    [%4ss] %d files built (last: %s)\n' "$(($(date +%s) - KILN_T0))" "$n" "${line##* }" >&2
            fi
            ;;
        esac
    done
    printf '    [%4ss] %d files built\n' "$(($(date +%s) - KILN_T0))" "$n" >&2
}

# Runs the kernel build (vmlinux and bzImage), showing the log's tail when it fails.
build_kernel_images() {
    local log="$BUILD/kernel-build.log"
    step "building vmlinux and bzImage with make -j$(nproc) (cold: ~4-7 minutes on 2 cores; log: $log)"
    if ! kmake -j"$(nproc)" vmlinux bzImage 2>&1 | tee "$log" | progress; then
        tail -n 40 "$log" >&2
        die "the kernel build failed (full log: $log)"
    fi
}

build_kernel() {
    [ -d "$SRC/.kiln-patches" ] || unpack_source
    sync_patches
    mkdir -p "$OBJ"
    step "configuring: make tinyconfig + ${FRAGMENT#"$KILN_ROOT"/}"
    local log="$BUILD/kernel-config.log"
    {
        kmake tinyconfig &&
            (cd "$SRC" && ./scripts/kconfig/merge_config.sh -m -O "$OBJ" "$OBJ/.config" "$FRAGMENT") &&
            kmake olddefconfig
    } >"$log" 2>&1 || { tail -n 40 "$log" >&2; die "configuring the kernel failed (log: $log)"; }
    verify_config
    build_kernel_images
    local tmp
    tmp="$(mktemp -d "$ASSETS/.kernel-$KERNEL_KEY.XXXXXX")"
    cp "$OBJ/vmlinux" "$tmp/vmlinux"
    cp "$OBJ/arch/x86/boot/bzImage" "$tmp/bzImage"
    cp "$OBJ/.config" "$tmp/config"
    chmod 755 "$tmp"
    publish "$tmp" "$KERNEL_OUT"
    step "kernel cached in $KERNEL_OUT"
}

# ---------------------------------------------------------------------------------------
# kiln-init, initramfs and ext4 root disk
# ---------------------------------------------------------------------------------------
build_init() {
    local target_dir="${CARGO_TARGET_DIR:-$KILN_ROOT/target}"
    case "$target_dir" in /*) ;; *) target_dir="$KILN_ROOT/$target_dir" ;; esac
    INIT_BIN="$target_dir/x86_64-unknown-linux-musl/release/kiln-init"
    musl_ensure
    (cd "$KILN_ROOT" && cargo build --quiet --release -p kiln-init) || die "cannot build kiln-init"
    [ -x "$INIT_BIN" ] || die "cargo built kiln-init but $INIT_BIN is missing"
    if readelf -lW "$INIT_BIN" | grep -q 'INTERP'; then
        die "$INIT_BIN is dynamically linked; the guest has no libc (see .cargo/config.toml)"
    fi
}

build_rootfs() {
    local tmp stage
    tmp="$(mktemp -d "$ASSETS/.rootfs-$ROOTFS_KEY.XXXXXX")"
    stage="$tmp/stage"
    mkdir -p "$stage/dev" "$stage/proc" "$stage/sys"
    install -m 0755 "$INIT_BIN" "$stage/init"
    find "$stage" -exec touch -h -d @0 {} + # reproducible archives

    step "building initramfs.cpio (uncompressed newc)"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio --quiet --reproducible -o -H newc -R 0:0) >"$tmp/initramfs.cpio"

    step "building rootfs.ext4 (${ROOTFS_SIZE_MIB} MiB, mkfs.ext4 -d, no loop mount)"
    truncate -s "${ROOTFS_SIZE_MIB}M" "$tmp/rootfs.ext4"
    mkfs.ext4 -q -F -L kiln-root -E root_owner=0:0 -d "$stage" "$tmp/rootfs.ext4" ||
        die "mkfs.ext4 failed"
    rm -rf "$stage"
    chmod 755 "$tmp"
    publish "$tmp" "$ROOTFS_OUT"
}

# ---------------------------------------------------------------------------------------
build_init
ROOTFS_KEY="$(key "recipe $ROOTFS_RECIPE" "size $ROOTFS_SIZE_MIB" "$INIT_BIN")"
ROOTFS_OUT="$ASSETS/rootfs-$ROOTFS_KEY"

cached=()
if [ -f "$KERNEL_OUT/vmlinux" ]; then cached+=("kernel-$KERNEL_KEY"); else build_kernel; fi
if [ -f "$ROOTFS_OUT/rootfs.ext4" ]; then cached+=("rootfs-$ROOTFS_KEY"); else build_rootfs; fi

SET="$KERNEL_KEY-$ROOTFS_KEY"
if [ ! -d "$ASSETS/$SET" ]; then
    tmp="$(mktemp -d "$ASSETS/.$SET.XXXXXX")"
    ln "$KERNEL_OUT"/{vmlinux,bzImage,config} "$ROOTFS_OUT"/{initramfs.cpio,rootfs.ext4} "$tmp/"
    chmod 755 "$tmp"
    publish "$tmp" "$ASSETS/$SET"
fi
if [ "$(readlink "$ASSETS/current" 2>/dev/null)" != "$SET" ]; then
    ln -sfn "$SET" "$ASSETS/current.tmp"
    mv -T "$ASSETS/current.tmp" "$ASSETS/current"
    step "assets ready: $ASSETS/current -> $SET"
elif [ ${#cached[@]} -eq 2 ]; then
    step "everything is cached: $ASSETS/current -> $SET (nothing to do)"
fi
