#!/bin/bash
# An initrd for Debian's own kernel (linux-image-amd64), the fallback guest kernel when no
# hull kernel was built (guest-kernel/build.sh takes minutes; this takes seconds).
#
#   guest-kernel/debian-initrd.sh AGENT [KVER]
#
# Debian builds virtio-mmio, the virtio console ports and 9p as modules, so the initrd carries
# them (with their dependencies from modules.dep) and /etc/hull-modules, the order in which
# hull-agent loads them at boot. The kernel is /boot/vmlinuz-KVER (KVER defaults to the newest
# installed *-amd64); boot it with ACPI on (`[vm] acpi = true`): its virtio-mmio driver has no
# command-line devices. Prints the initrd's path (cached like initrd.sh's).
set -euo pipefail

die() { echo "[debian-initrd] error: $*" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || die "usage: $0 AGENT [KVER]"
agent=$1
kver=${2:-$(ls /lib/modules 2>/dev/null | grep -- '-amd64$' | sort -V | tail -1 || true)}
[ -n "$kver" ] || die "no Debian kernel in /lib/modules (apt-get install linux-image-amd64)"
moddir=/lib/modules/$kver
[ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep is missing"
[ -f "/boot/vmlinuz-$kver" ] || die "/boot/vmlinuz-$kver is missing"

want=(virtio_mmio virtio_console 9pnet_virtio 9p)
declare -A seen=()
order=()
add() { [ -n "${seen[$1]:-}" ] && return; seen[$1]=1; order+=("$1"); }
for m in "${want[@]}"; do
    line=$(grep -E "(^|/)${m}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -1) \
        || die "module $m is not in $moddir/modules.dep (built in?)"
    rel=${line%%:*}
    read -r -a deps <<< "${line#*:}"
    # modules.dep lists every dependency; loading them right to left satisfies each one.
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add "${deps[i]}"; done
    add "$rel"
done

list=$(mktemp)
trap 'rm -f "$list"' EXIT
extras=()
for rel in "${order[@]}"; do
    echo "$moddir/$rel" >> "$list"
    extras+=("$moddir/$rel:$moddir/$rel")
done
extras+=("$list:/etc/hull-modules")
exec "$here/initrd.sh" --name "initrd-debian-$kver" "$agent" "${extras[@]}"
