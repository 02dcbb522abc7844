#!/bin/bash
# pgo-workload.sh SHIM DIR: what scripts/build-shim runs an instrumented shim through to
# collect its profile: the task API as containerd drives it for `ctr run --rm`, a
# two-container pod, a container of its own, exec, pause/resume, metrics, ps, kill and delete.
#
# Every process of the shim writes DIR/<pid>.profraw when it exits (LLVM_PROFILE_FILE,
# inherited through containerd). DIR/servers lists the pids of the long-lived shim servers:
# only their profiles describe the code a running shim keeps touching. The `start` and
# `delete` verbs and the `sandbox-spawn` helpers (libcontainer's create and exec) run in
# processes of their own that exit. Returns once every shim has exited.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shim=$(readlink -f "$1")
out=$(readlink -f "$2")
export LLVM_PROFILE_FILE="$out/%p.profraw"
. "$here/lib.sh"
start_containerd "$shim"
# The pids of the shim's running processes.
shim_pids() {
  for exe in /proc/[0-9]*/exe; do
    [ "$(readlink "$exe" 2>/dev/null)" = "$shim" ] || continue
    p=${exe#/proc/}
    echo "${p%/exe}"
  done
}
# Note each server as it appears: the shim's processes without a verb in their arguments.
(
  while :; do
    for p in $(shim_pids); do
      tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qE ' (start|delete|sandbox-spawn)( |$)' ||
        echo "$p" >> "$out/servers.all"
    done
    sleep 0.02
  done
) &
watcher=$!
rt=io.containerd.hull.v2
for i in 1 2 3; do
  $C run --rm --runtime $rt $img once-$i sh -c 'echo out; echo err >&2; exit 3' \
    </dev/null >/dev/null 2>&1 || true
done
for k in 1 2; do
  $C run -d --runtime $rt --annotation io.kubernetes.cri.sandbox-id=pod-$k $img pod-$k sleep 1000 >/dev/null
  $C run -d --runtime $rt --annotation io.kubernetes.cri.sandbox-id=pod-$k $img app-$k sleep 1000 >/dev/null
  $C task exec --exec-id e$k app-$k sh -c 'echo exec; exit 2' >/dev/null || true
  $C task pause app-$k
  $C task resume app-$k
  $C task metrics app-$k >/dev/null
  $C task ps app-$k >/dev/null
  $C task kill app-$k
done
# A container of its own (no pod annotation), as `ctr run -d` makes them.
$C run -d --runtime $rt $img solo sleep 1000 >/dev/null
$C task metrics solo >/dev/null
$C task kill -s KILL solo
sleep 0.3
remove_all
# The shims exit after their last task is deleted; a profile is written at exit.
for _ in $(seq 100); do
  if [ -z "$(shim_pids)" ]; then
    kill $watcher
    sort -u "$out/servers.all" > "$out/servers"
    exit 0
  fi
  sleep 0.1
done
kill $watcher
echo "pgo-workload: a shim did not exit; its profile is missing" >&2
exit 1
