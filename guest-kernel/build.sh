#!/bin/bash
# Build hull's guest kernel: an uncompressed, PVH-bootable `vmlinux` from Debian's
# linux-source-6.1 with the options in hull.config, cached outside the clone.
#
#   guest-kernel/build.sh            build (or reuse) and print the vmlinux path on stdout
#   guest-kernel/build.sh --path     print where the vmlinux for this tree lives; exit 1 if not built
#
# Cache: ${HULL_CACHE:-$HOME/.cache/hull}/kernel-<hash>/vmlinux, where <hash> covers hull.config,
# this script and the linux-source version. Progress goes to stderr. Takes ~6.5 min on 2 cores.
# HULL_KERNEL_JOBS sets make's -j (default: number of CPUs).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment="$here/hull.config"
cache_root=${HULL_CACHE:-$HOME/.cache/hull}
tarball=/usr/src/linux-source-6.1.tar.xz
jobs=${HULL_KERNEL_JOBS:-$(nproc)}

log() { echo "[guest-kernel] $*" >&2; }
die() { echo "[guest-kernel] error: $*" >&2; exit 1; }

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || true)
[ -n "$src_version" ] && [ -f "$tarball" ] ||
    die "linux-source-6.1 is not installed: run 'apt-get install -y linux-source-6.1'"

key=$( { cat "$fragment" "$0"; echo "linux-source-6.1 $src_version"; } | sha256sum | cut -c1-16)
out="$cache_root/kernel-$key"

if [ "${1:-}" = "--path" ]; then
    [ -f "$out/vmlinux" ] || exit 1
    echo "$out/vmlinux"; exit 0
fi

if [ -f "$out/vmlinux" ]; then
    log "cached: $out/vmlinux"
    echo "$out/vmlinux"; exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/kernel-build.lock"
if ! flock -n 9; then
    log "another kernel build is running; waiting for it"
    flock 9
fi
if [ -f "$out/vmlinux" ]; then echo "$out/vmlinux"; exit 0; fi

start=$(date +%s)
# One build tree per source version, shared by all fragments: a changed option rebuilds in seconds.
build="$cache_root/linux-source-$src_version.build"
if [ ! -f "$build/.extracted" ]; then
    rm -rf "$build"; mkdir -p "$build"
    log "extracting $tarball ($src_version) into $build"
    tar -xf "$tarball" -C "$build" --strip-components=1
    touch "$build/.extracted"
fi
cd "$build"

# Whether FILE still needs the source patch that leaves MARKER in it. Dies unless the line the
# patch rewrites or inserts after (ANCHOR, a grep -P regex) is in FILE exactly once, so that a
# new linux-source fails loudly instead of building unpatched.
needs_patch() { # FILE MARKER ANCHOR WHAT
    grep -qF "$2" "$1" && return 1
    local n
    n=$(grep -cP "$3" "$1" || true)
    [ "$n" = 1 ] || die "$4 patch: expected 1 match in $1, found $n"
}

# Skip poisoning freed init memory (and the freed initrd) with 0xcc: ~0.2 s of boot under
# TCG. Poisoning is a debugging aid that makes use-after-free of __init memory fault loudly;
# the pages are returned to the allocator either way, and the allocator never relies on
# their contents (__GFP_ZERO / init_on_alloc clear pages themselves).
if needs_patch arch/x86/mm/init.c 'hull: no init-memory poisoning' \
    'POISON_FREE_INITMEM, what\);' "init-memory poisoning"; then
    sed -i 's|POISON_FREE_INITMEM, what);|-1 /* hull: no init-memory poisoning */, what);|' arch/x86/mm/init.c
    log "patched arch/x86/mm/init.c: freed init memory is not poisoned"
fi

# `hull.apic_khz=KHZ` on the command line gives the local APIC timer's frequency, which skips
# its calibration and verification against the PIT: 2 x 100 ms of guest time, ~0.2 s of boot
# under TCG (no TSC-deadline timer there, so the kernel always calibrates). Linux has no such
# switch (lapic_timer_period is only ever set by platform code); QEMU's and KVM's APIC timer
# run at 1 GHz. Without the switch the kernel calibrates as before.
if needs_patch arch/x86/kernel/apic/apic.c 'hull: APIC timer frequency' \
    '^early_param\("nolapic_timer", parse_nolapic_timer\);$' "APIC timer"; then
    sed -i '/^early_param("nolapic_timer", parse_nolapic_timer);$/r /dev/stdin' arch/x86/kernel/apic/apic.c <<'EOF'

/* hull: APIC timer frequency from the command line, which skips its calibration */
static int __init parse_hull_apic_khz(char *arg)
{
	unsigned int khz;

	if (!arg || kstrtouint(arg, 0, &khz) || !khz)
		return -EINVAL;
	lapic_timer_period = div_u64((u64)khz * 1000, HZ);
	return 0;
}
early_param("hull.apic_khz", parse_hull_apic_khz);
EOF
    log "patched arch/x86/kernel/apic/apic.c: hull.apic_khz= skips the APIC timer calibration"
fi

# With `tsc_early_khz=` given (hull passes the host's), the kernel still measures the CPU's
# frequency against the PIT (quick_pit_calibrate, up to 50 ms of PIT polling; ~13 ms of boot
# under TCG, and it often fails there anyway) only to compare it with the TSC frequency it was
# told. Take the given frequency for both, as the kernel already does when they disagree.
if needs_patch arch/x86/kernel/tsc.c 'hull: cpu_khz from tsc_early_khz' \
    '^\t\tcpu_khz = x86_platform.calibrate_cpu\(\);$' "TSC"; then
    sed -i 's|^\t\tcpu_khz = x86_platform.calibrate_cpu();$|\t\t/* hull: cpu_khz from tsc_early_khz */\n\t\tcpu_khz = tsc_early_khz ? tsc_early_khz : x86_platform.calibrate_cpu();|' arch/x86/kernel/tsc.c
    log "patched arch/x86/kernel/tsc.c: tsc_early_khz= also skips the CPU frequency calibration"
fi

log "configuring: tinyconfig + hull.config + olddefconfig"
make -s tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig >/dev/null

missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qxF "$line" .config || { log "option dropped by olddefconfig: $line (got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo unset))"; missing=1; } ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }; opt=${opt%% *}
            if grep -qE "^$opt=" .config; then log "option should be off: $opt"; missing=1; fi ;;
    esac
done < "$fragment"
[ "$missing" = 0 ] || die "requested options missing after olddefconfig (a menu parent is probably off): fix hull.config"
log "all $(grep -c '^CONFIG_' "$fragment") requested options present"

log "building vmlinux with make -j$jobs (about 6.5 minutes on 2 idle cores; log: $build/build.log)"
set +e
make -j"$jobs" vmlinux 2>&1 | tee "$build/build.log" | awk -v t0="$start" '
    /^  [A-Z]/ { n++; if (n % 250 == 0) { printf "[guest-kernel] %5d steps, %4ds, %s\n", n, systime() - t0, $NF > "/dev/stderr"; fflush("/dev/stderr") } }
    /error|Error/ { print > "/dev/stderr" }'
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || die "make vmlinux failed (exit $rc); see $build/build.log"

mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp .config "$out.tmp/config"
echo "$src_version" > "$out.tmp/source-version"
rm -rf "$out"; mv "$out.tmp" "$out"
log "built $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1)) in $(( $(date +%s) - start ))s"
echo "$out/vmlinux"
