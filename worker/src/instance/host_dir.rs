//! The instance's private host directory `<state>/instances/<id>/` (root, 0700): its own copy
//! of the image (or initramfs), its VM config, its tenant profile, and `vsock/` with the
//! socket the worker listens on before anything starts; and where each of them appears
//! inside the jail.

use super::config::InstanceConfig;
use super::error::InstanceError;
use crate::function::Function;
use kiln_guest_builder::Kind as FunctionKind;
use kiln_protocol::GUEST_CONNECT_PORT;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// The guest's CID (any value ≥ 3: each VMM has its own vsock device).
const GUEST_CID: u32 = 3;
/// Where the vsock directory is bound inside the jail, and the VMM's socket in it.
pub(super) const JAIL_VSOCK_DIR: &str = "/vsock";
const VSOCK_NAME: &str = "v.sock";
/// Where the image and the config are bound inside the jail.
pub(super) const JAIL_IMAGE: &str = "/function.elf";
pub(super) const JAIL_CONFIG: &str = "/vm.json";
/// Where a Linux function's initramfs is bound inside the jail (its kernel is at
/// [`JAIL_IMAGE`]).
pub(super) const JAIL_INITRD: &str = "/initrd.cpio";
/// Unix socket paths hold at most 107 bytes.
const MAX_SOCKET_PATH: usize = 107;

/// Files of the host directory: the instance's copy of the function's image or initramfs,
/// the VM config, the tenant profile, and the vsock directory.
pub(super) const PRIVATE_IMAGE: &str = "function.elf";
pub(super) const PRIVATE_INITRD: &str = "initrd.cpio";
pub(super) const VM_CONFIG: &str = "vm.json";
pub(super) const PROFILE: &str = "profile.json";
pub(super) const VSOCK_DIR: &str = "vsock";

/// Creates the instance's host directory for `function`: [`prepare`] and the function's
/// files (its image or initramfs and the VM config the VMM boots from).
pub(super) fn prepare_for(
    cfg: &InstanceConfig,
    function: &Function,
    dir: &Path,
    uid: u32,
    writable: &[&str],
) -> Result<UnixListener, InstanceError> {
    let listener = prepare(cfg, function.memory_mib, dir, uid, writable)?;
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstanceError::HostDir { path, source }
    };
    // The instance's own copy of the image (or initramfs), readable by its uid only.
    let linux = function.kind == FunctionKind::Linux;
    let image = dir.join(if linux { PRIVATE_INITRD } else { PRIVATE_IMAGE });
    copy_private(&function.image, &image, uid).map_err(err(&image))?;
    let vm = serde_json::json!({
        "boot-source": boot_source(function),
        "machine-config": machine_config(function.vcpus, function.memory_mib, linux),
        "vsock": vsock(),
    });
    let vm_path = dir.join(VM_CONFIG);
    write_private(&vm_path, vm.to_string().as_bytes(), 0o400).map_err(err(&vm_path))?;
    std::os::unix::fs::chown(&vm_path, Some(uid), Some(uid)).map_err(err(&vm_path))?;
    Ok(listener)
}

/// The VM config's `boot-source` for `function` (paths inside the jail).
pub(super) fn boot_source(function: &Function) -> serde_json::Value {
    let mut boot_source = serde_json::json!({ "kernel_image_path": JAIL_IMAGE });
    if function.kind == FunctionKind::Linux {
        boot_source["initrd_path"] = JAIL_INITRD.into();
    }
    if let Some(args) = &function.boot_args {
        boot_source["boot_args"] = args.clone().into();
    }
    boot_source
}

/// The VM config's `machine-config`. A function image (not `linux`) keeps time with the
/// TSC: its VM gets no in-kernel PIT, whose destruction costs every teardown ~13 ms of SRCU
/// grace periods (docs/benchmarks.md); a Linux function's kernel keeps the PIT Firecracker
/// gives every guest.
pub(super) fn machine_config(vcpus: u8, memory_mib: u32, linux: bool) -> serde_json::Value {
    let mut machine = serde_json::json!({ "vcpu_count": vcpus, "mem_size_mib": memory_mib });
    if !linux {
        machine["pit"] = false.into();
    }
    machine
}

/// The VM config's `vsock`: the guest's connections go to the worker's listener.
pub(super) fn vsock() -> serde_json::Value {
    serde_json::json!({ "guest_cid": GUEST_CID, "uds_path": format!("{JAIL_VSOCK_DIR}/{VSOCK_NAME}") })
}

/// A private copy of `from` at `to` (created, never replaced, no link followed), mode 0400,
/// owned by `uid` (= gid): the instance's own copy of an image.
pub(super) fn copy_private(from: &Path, to: &Path, uid: u32) -> std::io::Result<()> {
    let bytes = std::fs::read(from)?;
    write_private(to, &bytes, 0o400)?;
    std::os::unix::fs::chown(to, Some(uid), Some(uid))
}

/// Creates an instance's host directory: its tenant profile (with the memory limit for
/// `memory_mib` of guest memory) and `vsock/` with the listening socket. `writable`: jail
/// paths (writable binds) where the VMM may also create, truncate and remove files, granted
/// in the instance's tenant profile (Landlock `rw`): a snapshot template's directory, where
/// `PUT /snapshot/create` writes.
pub(super) fn prepare(
    cfg: &InstanceConfig,
    memory_mib: u32,
    dir: &Path,
    uid: u32,
    writable: &[&str],
) -> Result<UnixListener, InstanceError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstanceError::HostDir { path, source }
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(err(parent))?;
    }
    std::fs::create_dir(dir).map_err(err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err(dir))?;

    // The default profile with this function's memory limit (and the writable paths).
    let mut profile = cfg.profile.clone();
    let limit = (u64::from(memory_mib) + u64::from(cfg.memory_overhead_mib)) << 20;
    match profile.as_object_mut() {
        Some(p) => {
            let cgroup = p.entry("cgroup").or_insert_with(|| serde_json::json!({}));
            if let Some(c) = cgroup.as_object_mut() {
                c.insert("memory_bytes".into(), limit.into());
            }
            let landlock = p.entry("landlock").or_insert_with(|| serde_json::json!({}));
            if let Some(l) = landlock.as_object_mut() {
                let paths = l.entry("paths").or_insert_with(|| serde_json::json!([]));
                if let Some(list) = paths.as_array_mut() {
                    list.extend(
                        writable
                            .iter()
                            .map(|p| serde_json::json!({"path": p, "access": "rw"})),
                    );
                }
            }
        }
        None => {
            return Err(InstanceError::Profile {
                path: cfg.profile_path.clone(),
                message: "not a JSON object".into(),
            })
        }
    }
    let profile_path = dir.join(PROFILE);
    write_private(&profile_path, profile.to_string().as_bytes(), 0o600)
        .map_err(err(&profile_path))?;

    let vsock = dir.join(VSOCK_DIR);
    std::fs::create_dir(&vsock).map_err(err(&vsock))?;
    std::fs::set_permissions(&vsock, std::fs::Permissions::from_mode(0o700))
        .map_err(err(&vsock))?;
    std::os::unix::fs::chown(&vsock, Some(uid), Some(uid)).map_err(err(&vsock))?;
    let sock = vsock.join(format!("{VSOCK_NAME}_{GUEST_CONNECT_PORT}"));
    if sock.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(InstanceError::SocketPathTooLong {
            path: sock,
            max: MAX_SOCKET_PATH,
        });
    }
    let listener = UnixListener::bind(&sock).map_err(err(&sock))?;
    std::os::unix::fs::chown(&sock, Some(uid), Some(uid)).map_err(err(&sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(err(&sock))?;
    Ok(listener)
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)
}
