# Sourced by the shim's bench scripts: a private containerd 1.6 (no CRI) whose PATH finds
# $shim as containerd-shim-hull-v2, with the local busybox image imported.
#   start_containerd SHIM  sets dir, C (the ctr command line), img, cpid; an EXIT trap
#                          removes every task, container, mount and file it made.
ns=bench
img=docker.io/hull/busybox:latest

start_containerd() {
  dir=$(mktemp -d /tmp/hull-shim-bench.XXXXXX)
  mkdir -p "$dir/bin"
  ln -s "$1" "$dir/bin/containerd-shim-hull-v2"
  cat > "$dir/config.toml" <<CFG
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/c.sock"
CFG
  PATH="$dir/bin:$PATH" containerd --config "$dir/config.toml" > "$dir/containerd.log" 2>&1 &
  cpid=$!
  trap stop_containerd EXIT
  for _ in $(seq 100); do [ -S "$dir/c.sock" ] && break; sleep 0.05; done
  C="ctr -a $dir/c.sock -n $ns"
  "$(dirname "${BASH_SOURCE[0]}")/../tests/support/mkimage.sh" "$dir/img.tar" $img
  $C images import "$dir/img.tar" >/dev/null
}

# Kill and delete what is left; the shims exit once their last task is deleted.
remove_all() {
  for id in $($C task ls -q 2>/dev/null); do
    $C task kill -s KILL "$id" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for id in $($C container ls -q 2>/dev/null); do
    $C task delete "$id" >/dev/null 2>&1 || true
    $C container rm "$id" >/dev/null 2>&1 || true
  done
}

stop_containerd() {
  remove_all
  kill "$cpid" 2>/dev/null || true
  wait "$cpid" 2>/dev/null || true
  grep -o " $dir[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$dir" "/run/hull/containerd/$ns"
}
