#!/bin/bash
# run-vs-runc.sh [N]: `ctr run --rm IMAGE ID true` through io.containerd.hull.v2 and
# io.containerd.runc.v2, interleaved, N runs each (default 30), on a private containerd
# 1.6; prints both means and the ratio. Then the resident memory of one shim per pod
# (1 container, then 2 in the same pod), hull's and runc's.
#
# SHIM: the shim binary (default: the one `make shim` builds, as it ships).
set -euo pipefail
n=${1:-30}
here=$(cd "$(dirname "$0")" && pwd)
shim=${SHIM:-${CARGO_TARGET_DIR:-$here/../../target}/x86_64-unknown-linux-gnu/release/containerd-shim-hull-v2}
[ -x "$shim" ] || { echo "build it first: make shim (scripts/build-shim)" >&2; exit 1; }
. "$here/lib.sh"
start_containerd "$shim"

ms() { date +%s%N; }
one() { # runtime id -> elapsed ns
  local t0 t1
  t0=$(ms)
  $C run --rm --runtime "$1" $img "$2" true </dev/null >/dev/null
  t1=$(ms)
  echo $((t1 - t0))
}
# Warm both paths once.
one io.containerd.hull.v2 warm-h >/dev/null
one io.containerd.runc.v2 warm-r >/dev/null
th=0; tr=0
for i in $(seq "$n"); do
  th=$((th + $(one io.containerd.hull.v2 h$i)))
  tr=$((tr + $(one io.containerd.runc.v2 r$i)))
done
mh=$((th / n / 1000)); mr=$((tr / n / 1000))
echo "ctr run --rm true, $n runs each, interleaved:"
echo "  hull shim: mean $((mh / 1000)).$(printf %03d $((mh % 1000))) ms"
echo "  runc shim: mean $((mr / 1000)).$(printf %03d $((mr % 1000))) ms"
awk -v a=$th -v b=$tr 'BEGIN { printf "  ratio hull/runc: %.2fx\n", a / b }'

mem() { # pid -> "RSS x KiB (PSS y, private z)": RSS counts the binary's shared pages,
        # PSS splits them among the processes sharing them, private is this shim's own.
  awk '/^Rss:/ {r=$2} /^Pss:/ {p=$2} /^Private_(Clean|Dirty):/ {u+=$2}
       END {printf "RSS %d KiB (PSS %d, private %d)", r, p, u}' "/proc/$1/smaps_rollup"
}
shim_of() { # container id -> pid of its shim (the parent/subreaper of its init)
  local pid
  pid=$($C task ls | awk -v id="$1" '$1 == id {print $2}')
  awk '/^PPid/ {print $2}' "/proc/$pid/status"
}
echo "shim memory per pod (one shim per pod; runc's shim groups by the same annotation):"
for rt in io.containerd.hull.v2 io.containerd.runc.v2; do
  tag=${rt#io.containerd.}; tag=${tag%.v2}
  $C run -d --runtime $rt --annotation io.kubernetes.cri.sandbox-id=pod-$tag $img pod-$tag sleep 1000 >/dev/null
  sleep 0.3
  p=$(shim_of pod-$tag)
  one_c=$(mem "$p")
  $C run -d --runtime $rt --annotation io.kubernetes.cri.sandbox-id=pod-$tag $img app-$tag sleep 1000 >/dev/null
  sleep 0.3
  two_c=$(mem "$p")
  echo "  $tag, 1 container:  $one_c"
  echo "  $tag, 2 in the pod: $two_c"
done
# Per-pod cost with several pods: each shim's PSS, its share of the code all shims map.
echo "three more pods of each (one shim each), PSS per shim:"
for rt in io.containerd.hull.v2 io.containerd.runc.v2; do
  tag=${rt#io.containerd.}; tag=${tag%.v2}
  line="  $tag:"
  for k in 1 2 3; do
    $C run -d --runtime $rt $img solo-$tag-$k sleep 1000 >/dev/null
  done
  sleep 0.3
  for k in 1 2 3; do
    line="$line $(mem "$(shim_of solo-$tag-$k)" | sed 's/ (/\n/' | sed -n 2p | sed 's/,.*//')"
  done
  echo "$line"
done
