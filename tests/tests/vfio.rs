//! VFIO PCI pass-through, proven where it can run: this project's machines have no IOMMU, so
//! the test boots a nested machine (`scripts/nested-machine`: QEMU TCG emulating AMD SVM and an
//! Intel IOMMU, this host's root filesystem visible inside) with an emulated NVMe controller,
//! which that machine binds to vfio-pci. Inside it, `hull run` gives the controller to a vm
//! pod, by its VFIO group node and by the `io.hull.vfio` annotation; the pod's guest kernel
//! drives it with its own nvme driver and the container sees the namespace's size. A second
//! pod asking for the group while the first holds it is refused. (The refusals on a host
//! without an IOMMU are in vm.rs.)

use std::time::Duration;

use hull_tests::*;

/// QEMU's emulated NVMe controller (vendor:device), 64 MiB in 512-byte sectors.
const NVME_ID: &str = "1b36:0010";
const NVME_SECTORS: &str = "131072";

/// What the container prints: each PCI device with its driver, and the NVMe namespace's size.
const PROBE: &str = "for d in /sys/bus/pci/devices/*; do \
     echo \"pci $(cat $d/vendor | cut -c3-):$(cat $d/device | cut -c3-) \
     $(basename $(readlink $d/driver) 2>/dev/null)\"; done; \
     echo \"nvme0n1 $(cat /sys/block/nvme0n1/size)\"";

#[test]
fn a_pci_device_bound_to_vfio_pci_is_driven_by_the_pods_guest_kernel() {
    let Some(a) = guest_artefacts() else { return };
    let dir = tempfile::Builder::new()
        .prefix("hull-vfio-")
        .tempdir()
        .unwrap();
    // Bundles made here are shared with the nested machine; the group node's numbers are
    // only known there, so its bundle is a template.
    let by_group = Bundle::with(&["sh", "-c", PROBE], |v| {
        v["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/vfio/GROUP", "type": "c", "major": 4242, "minor": 4343}
        ]);
        v["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"allow": true, "type": "c", "major": 4242, "minor": 4343, "access": "rw"}
            ));
    });
    let by_annotation = Bundle::with(&["sh", "-c", PROBE], |v| {
        v["annotations"]["io.hull.vfio"] = "ADDRESS".into();
    });
    let holder = Bundle::with(&["sleep", "300"], |v| {
        v["annotations"]["io.hull.vfio"] = "ADDRESS".into();
    });
    let accel = std::env::var("HULL_NESTED_ACCEL").unwrap_or_else(|_| "kvm".into());
    let config = dir.path().join("vm.toml");
    std::fs::write(
        &config,
        format!(
            "isolation = \"vm\"\n[vm]\nhypervisor = \"qemu\"\naccel = {accel:?}\n\
             kernel = {:?}\ninitrd = {:?}\nboot_timeout_s = 120\ntemplate = false\n",
            a.kernel.to_str().unwrap(),
            a.initrd.to_str().unwrap()
        ),
    )
    .unwrap();
    let inner = dir.path().join("inner.sh");
    std::fs::write(
        &inner,
        format!(
            r#"set -u
touch /run/vfio-start
hull="{hull} --root /run/hull-vfio --config {config}"
g=$HULL_NESTED_VFIO_GROUP; addr=$HULL_NESTED_VFIO_PCI
for i in $(seq 100); do [ -c /dev/vfio/$g ] && break; sleep 0.1; done
maj=$((0x$(stat -c %t /dev/vfio/$g))); min=$((0x$(stat -c %T /dev/vfio/$g)))
# The templates as the test wrote them (a retry starts from them again).
for b in {by_group} {by_annotation} {holder}; do
    [ -f $b/config.json.in ] || cp $b/config.json $b/config.json.in; cp $b/config.json.in $b/config.json
done
sed -i -e "s/4242/$maj/g" -e "s/4343/$min/g" -e "s/GROUP/$g/" {by_group}/config.json
sed -i "s/ADDRESS/$addr/" {by_annotation}/config.json {holder}/config.json
echo "== group $g $addr"
$hull run --bundle {by_group} vfio-group; echo "exit $?"
echo "== annotation"
$hull run --bundle {by_annotation} vfio-annotation; echo "exit $?"
echo "== in use"
$hull create --bundle {holder} vfio-holder; echo "holder $?"
$hull run --bundle {by_annotation} vfio-second 2>&1; echo "exit $?"
$hull delete --force vfio-holder; echo "deleted $?"
echo "== left: $(ls /run/hull-vfio 2>/dev/null | wc -l) $(pgrep -c qemu-system)"
# The guest console of any start that failed in this machine (its logs die with it).
for log in $(find /var/log/hull/failed-boots -name console.log -newer /run/vfio-start 2>/dev/null); do
    echo "--- $log" >&2; tail -40 "$log" >&2
done
"#,
            hull = bin("hull").display(),
            config = config.display(),
            by_group = by_group.path().display(),
            by_annotation = by_annotation.path().display(),
            holder = holder.path().display(),
        ),
    )
    .unwrap();
    // The guests' consoles of failed boots are in stderr (the script prints them).
    let run = with_one_retry(|| {
        let shares = [
            dir.path(),
            by_group.path(),
            by_annotation.path(),
            holder.path(),
        ];
        // One L1 CPU: with two, one L2 boot in 25 reset silently (CI saw it twice). A run
        // takes 35-41 s; the timeout ends an L1 that froze (2 boots in 80 with one CPU)
        // early enough for the retry.
        let args = ["--iommu", "--nvme", "64", "--cpus", "1", "--timeout", "180"];
        let run = nested_machine(&args, &shares, &inner, Duration::from_secs(240));
        (run, String::new())
    });
    let (out, text) = (run.out, run.stdout);
    assert_eq!(out.status.code(), Some(0), "the nested machine failed");
    let section = |name: &str| -> String {
        text.split("== ")
            .find(|s| s.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} section"))
            .to_string()
    };
    for name in ["group", "annotation"] {
        let s = section(name);
        assert!(s.contains("exit 0"), "{name}: {s}");
        // The guest's own nvme driver has the passed controller, and reads its namespace.
        assert!(
            s.lines()
                .any(|l| l.starts_with("pci ") && l.contains(NVME_ID) && l.ends_with(" nvme")),
            "{name}: the controller is not bound to the guest's nvme driver: {s}"
        );
        assert!(
            s.contains(&format!("nvme0n1 {NVME_SECTORS}")),
            "{name}: the namespace's size: {s}"
        );
    }
    let s = section("in use");
    assert!(s.contains("holder 0"), "{s}");
    assert!(
        s.contains("in use by another vm pod") && s.contains("exit 1"),
        "{s}"
    );
    assert!(s.contains("deleted 0"), "{s}");
    assert!(
        section("left").starts_with("left: 0 0"),
        "{}",
        section("left")
    );
}
