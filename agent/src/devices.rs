//! Host block devices passed to a vm pod arrive as the VM's virtio-blk disks. The host's spec
//! names them with the host's major:minor, which mean nothing here: each disk is found by its
//! serial (`/sys/block/<dev>/serial`, waited for within a bound), and the spec's device and the
//! device cgroup rules that named the host's numbers are rewritten to the disk's numbers here;
//! libcontainer then makes the node.

use std::path::Path;
use std::time::{Duration, Instant};

use hull_protocols::agent::BlockDevice;
use oci_spec::runtime::{LinuxDeviceType, Spec};

use crate::error::{AgentError, Result};

/// How long a disk may take to appear (cold-plugged: there already; in a slot: the guest
/// takes the resize).
const FIND: Duration = Duration::from_secs(5);

/// The guest's node (`/dev/vdX`) of the disk whose serial is `serial`, waited for like a
/// container's block device (a disk slot filled just now grows from size 0).
pub fn disk_node(serial: &str) -> Result<std::path::PathBuf> {
    let (_, _, name) = find_disk(Path::new("/sys/block"), serial, FIND)?;
    Ok(Path::new("/dev").join(name))
}

/// The `major:minor` of the disk whose serial is `serial`, under `sys_block`.
fn find_disk(sys_block: &Path, serial: &str, within: Duration) -> Result<(i64, i64, String)> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(entries) = std::fs::read_dir(sys_block) {
            for e in entries.flatten() {
                let dir = e.path();
                let s = std::fs::read_to_string(dir.join("serial")).unwrap_or_default();
                if s.trim() != serial {
                    continue;
                }
                // A disk slot filled while the VM runs grows from 0 when the guest has taken
                // the resize; until then it is not the device yet.
                let size = std::fs::read_to_string(dir.join("size")).unwrap_or_default();
                if size.trim() == "0" {
                    break;
                }
                let dev = std::fs::read_to_string(dir.join("dev"))
                    .map_err(|e| AgentError::io(format!("read {}/dev", dir.display()), e))?;
                let (maj, min) = dev.trim().split_once(':').ok_or_else(|| {
                    AgentError::InvalidArgument(format!("{}/dev: {dev:?}", dir.display()))
                })?;
                let num = |x: &str| {
                    x.parse::<i64>().map_err(|_| {
                        AgentError::InvalidArgument(format!("{}/dev: {dev:?}", dir.display()))
                    })
                };
                let name = e.file_name().to_string_lossy().into_owned();
                return Ok((num(maj)?, num(min)?, name));
            }
        }
        if Instant::now() >= deadline {
            return Err(AgentError::FailedPrecondition(format!(
                "no disk with serial {serial:?} appeared in the guest within {within:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rewrites `spec`'s block devices named in `disks` to the VM's disks (found under
/// `sys_block`, normally `/sys/block`).
pub fn attach_disks(spec: &mut Spec, disks: &[BlockDevice], sys_block: &Path) -> Result<()> {
    if disks.is_empty() {
        return Ok(());
    }
    let Some(linux) = spec.linux_mut() else {
        return Err(AgentError::InvalidArgument(
            "block devices without a linux section".into(),
        ));
    };
    let mut devices = linux.devices().clone().unwrap_or_default();
    let mut renumbered = Vec::new();
    for d in disks {
        let dev = devices
            .iter_mut()
            .find(|x| x.path().as_os_str() == d.container_path.as_str())
            .ok_or_else(|| {
                AgentError::InvalidArgument(format!(
                    "block device {}: not in the spec's devices",
                    d.container_path
                ))
            })?;
        if dev.typ() != LinuxDeviceType::B {
            return Err(AgentError::InvalidArgument(format!(
                "{}: not a block device",
                d.container_path
            )));
        }
        let (maj, min, name) = find_disk(sys_block, &d.serial, FIND)?;
        tracing::info!(path = %d.container_path, disk = %name, major = maj, minor = min, "block device is the vm's disk");
        renumbered.push(((dev.major(), dev.minor()), (maj, min)));
        dev.set_major(maj);
        dev.set_minor(min);
    }
    linux.set_devices(Some(devices));
    if let Some(res) = linux.resources_mut() {
        if let Some(rules) = res.devices_mut() {
            for r in rules.iter_mut() {
                let block = matches!(r.typ(), Some(LinuxDeviceType::B));
                if !block {
                    continue;
                }
                for ((hmaj, hmin), (gmaj, gmin)) in &renumbered {
                    if r.major() == Some(*hmaj) && r.minor() == Some(*hmin) {
                        r.set_major(Some(*gmaj));
                        r.set_minor(Some(*gmin));
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_found_by_serial_takes_the_place_of_the_hosts_device() {
        let sys = tempfile::tempdir().unwrap();
        for (name, serial, dev) in [("vda", "other", "254:0"), ("vdb", "hull-disk-0", "254:16")] {
            let d = sys.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("serial"), serial).unwrap();
            std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        }
        let mut spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{
                "devices":[{"path":"/dev/xdisk","type":"b","major":7,"minor":5}],
                "resources":{"devices":[{"allow":false,"access":"rwm"},
                    {"allow":true,"type":"b","major":7,"minor":5,"access":"r"}]}}}"#,
        )
        .unwrap();
        let disks = [BlockDevice {
            serial: "hull-disk-0".into(),
            container_path: "/dev/xdisk".into(),
            ..Default::default()
        }];
        attach_disks(&mut spec, &disks, sys.path()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let d = &linux.devices().as_ref().unwrap()[0];
        assert_eq!((d.major(), d.minor()), (254, 16));
        let rule = &linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()[1];
        assert_eq!((rule.major(), rule.minor()), (Some(254), Some(16)));
        assert_eq!(
            rule.access().as_deref(),
            Some("r"),
            "the access stays the client's"
        );

        let missing = [BlockDevice {
            serial: "hull-disk-9".into(),
            container_path: "/dev/xdisk".into(),
            ..Default::default()
        }];
        let e = find_disk(sys.path(), &missing[0].serial, Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hull-disk-9"), "{e}");
    }
}
