#!/bin/bash
# Build an uncompressed cpio initrd whose /init is a given program, with the shared libraries
# it links (ldd) and the directories hull-agent mounts over at boot.
#
#   guest-kernel/initrd.sh [--name NAME] INIT [SRC:DEST ...]
#
# INIT becomes /init (usually target/.../hull-agent); each SRC:DEST copies a further host file
# (with its libraries) into the image. Prints the initrd's path on stdout. Cached as
# ${HULL_CACHE:-$HOME/.cache/hull}/NAME-<hash>.cpio (NAME defaults to "initrd"), keyed by the
# contents of every file put in and by this script. Uncompressed: unpacking a gzip initramfs costs
# ~0.2 s of boot under TCG.
set -euo pipefail

log() { echo "[initrd] $*" >&2; }
die() { echo "[initrd] error: $*" >&2; exit 1; }

name=initrd
if [ "${1:-}" = "--name" ]; then name=$2; shift 2; fi
[ $# -ge 1 ] || die "usage: $0 [--name NAME] INIT [SRC:DEST ...]"
init=$1; shift
[ -f "$init" ] && [ -x "$init" ] || die "$init is not an executable file"
extras=("$@")

cache_root=${HULL_CACHE:-$HOME/.cache/hull}

# The shared libraries (and the loader) of one ELF file; nothing for static or script files.
libs_of() {
    ldd "$1" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' || true
}

files=("$init")
for e in "${extras[@]+"${extras[@]}"}"; do
    src=${e%%:*}; [ -f "$src" ] || die "$src (from $e) is not a file"; files+=("$src")
done
mapfile -t libs < <(for f in "${files[@]}"; do libs_of "$f"; done | sort -u)

# Keyed by what ends up in the image (destination paths and contents), not by where the
# sources live: a test's init script in a fresh temp dir still hits the cache.
key=$( { cat "$0"; echo /init; sha256sum < "$init"
         for e in "${extras[@]+"${extras[@]}"}"; do echo "${e#*:}"; sha256sum < "${e%%:*}"; done
         for l in "${libs[@]+"${libs[@]}"}"; do echo "$l"; sha256sum < "$l"; done; } | sha256sum | cut -c1-16)
out="$cache_root/$name-$key.cpio"
if [ -f "$out" ]; then log "cached: $out"; echo "$out"; exit 0; fi

mkdir -p "$cache_root"
root=$(mktemp -d "$cache_root/.initrd-root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{proc,sys,dev,run,tmp,etc,bin}
# The kernel opens /dev/console for /init's stdio before anything mounts devtmpfs.
mknod -m 600 "$root/dev/console" c 5 1
install -m 0755 "$init" "$root/init"
# A debug build of the agent is mostly DWARF and symbols (127 MB -> 20 MB): every byte of the
# initrd is copied at boot.
if head -c4 "$root/init" | grep -q ELF; then strip --strip-all "$root/init"; fi
for e in "${extras[@]+"${extras[@]}"}"; do
    dest=${e#*:}; mkdir -p "$root$(dirname "$dest")"; cp -L "${e%%:*}" "$root$dest"
done
for l in "${libs[@]+"${libs[@]}"}"; do
    mkdir -p "$root$(dirname "$l")"; cp -L "$l" "$root$l"
done
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) > "$out.tmp"
mv "$out.tmp" "$out"
log "built $out ($(du -h "$out" | cut -f1); init: $init, ${#libs[@]} shared libraries)"
echo "$out"
