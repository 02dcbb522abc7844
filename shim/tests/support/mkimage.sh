#!/bin/bash
# mkimage.sh OUT.tar NAME [CMD_JSON]: an OCI image layout tar (busybox rootfs, sha256 digests,
# index.json carrying io.containerd.image.name) for `ctr images import`; no registry needed.
set -euo pipefail
out=$1; name=$2; cmd=${3:-'["sh"]'}
w=$(mktemp -d); trap 'rm -rf $w' EXIT
mkdir -p $w/rootfs/bin $w/rootfs/etc $w/rootfs/tmp $w/rootfs/proc $w/rootfs/sys $w/rootfs/dev $w/oci/blobs/sha256
cp $(command -v busybox) $w/rootfs/bin/busybox
for a in $(busybox --list); do [ -e $w/rootfs/bin/$a ] || ln -s busybox $w/rootfs/bin/$a; done
echo 'root:x:0:0:root:/root:/bin/sh' > $w/rootfs/etc/passwd
echo 'root:x:0:' > $w/rootfs/etc/group
tar --sort=name --mtime=@0 --owner=0 --group=0 -C $w/rootfs -cf $w/layer.tar .
diffid=$(sha256sum $w/layer.tar | cut -d' ' -f1)
gzip -n -c $w/layer.tar > $w/layer.tgz
lsum=$(sha256sum $w/layer.tgz | cut -d' ' -f1); lsize=$(stat -c %s $w/layer.tgz)
mv $w/layer.tgz $w/oci/blobs/sha256/$lsum
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$cmd" $diffid > $w/config.json
csum=$(sha256sum $w/config.json | cut -d' ' -f1); csize=$(stat -c %s $w/config.json)
mv $w/config.json $w/oci/blobs/sha256/$csum
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' $csum $csize $lsum $lsize > $w/m.json
msum=$(sha256sum $w/m.json | cut -d' ' -f1); msize=$(stat -c %s $w/m.json)
mv $w/m.json $w/oci/blobs/sha256/$msum
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"latest"}}]}' $msum $msize $name > $w/oci/index.json
echo '{"imageLayoutVersion":"1.0.0"}' > $w/oci/oci-layout
tar -C $w/oci -cf $out .
