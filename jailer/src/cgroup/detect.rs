//! Which cgroup hierarchies the host has (v1, v2 or both: "hybrid") and where the jailer's
//! own cgroups are, from /proc/self/mountinfo and /proc/self/cgroup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{CgroupError, Host};

/// cgroup v1 controllers the jailer knows (mount options that are not controllers, such as
/// `rw` or `name=systemd`, are ignored).
pub const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Mount point, as a path on the host (`/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// The jailer's own cgroup in this hierarchy, relative to the mount point.
    pub own: PathBuf,
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// v1 controller -> its hierarchy (controllers mounted together share one).
    pub v1: BTreeMap<String, Hierarchy>,
    /// The cgroup2 hierarchy, if mounted.
    pub v2: Option<Hierarchy>,
    /// Controllers available in the v2 hierarchy (its root's cgroup.controllers).
    pub v2_controllers: BTreeSet<String>,
}

struct MountEntry {
    root: String,
    mount_point: String,
    fs_type: String,
    super_options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(v) = field
                .get(i + 1..i + 4)
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fs_type), Some(super_options)) =
            (l.get(3), l.get(4), r.first(), r.get(2))
        else {
            continue;
        };
        entries.push(MountEntry {
            root: unescape(root),
            mount_point: unescape(mount_point),
            fs_type: (*fs_type).to_owned(),
            super_options: (*super_options).to_owned(),
        });
    }
    entries
}

/// Own cgroup paths from /proc/self/cgroup: controller -> path, and the v2 path.
fn parse_self_cgroup(text: &str) -> (BTreeMap<String, String>, Option<String>) {
    let mut v1 = BTreeMap::new();
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path.to_owned());
        } else {
            for c in controllers.split(',') {
                v1.insert(c.to_owned(), path.to_owned());
            }
        }
    }
    (v1, v2)
}

/// The own cgroup relative to a mount of the hierarchy whose root is `mount_root`.
fn own_relative(own: &str, mount_root: &str, what: &str) -> Result<PathBuf, CgroupError> {
    let own_path = Path::new(own);
    let rel = own_path
        .strip_prefix(mount_root)
        .map_err(|_| CgroupError::OwnCgroup {
            hierarchy: what.to_owned(),
            path: own.to_owned(),
        })?;
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(CgroupError::OwnCgroup {
            hierarchy: what.to_owned(),
            path: own.to_owned(),
        });
    }
    Ok(rel.to_path_buf())
}

/// Reads the layout from the host (or a fake host in tests).
pub fn detect(host: &Host) -> Result<Layout, CgroupError> {
    let mounts = parse_mountinfo(&host.mountinfo);
    let (own_v1, own_v2) = parse_self_cgroup(&host.self_cgroup);
    let mut layout = Layout::default();
    for m in &mounts {
        match m.fs_type.as_str() {
            "cgroup" => {
                for opt in m.super_options.split(',') {
                    if !V1_CONTROLLERS.contains(&opt) || layout.v1.contains_key(opt) {
                        continue;
                    }
                    let own = match own_v1.get(opt) {
                        Some(p) => own_relative(p, &m.root, opt)?,
                        None => PathBuf::new(),
                    };
                    layout.v1.insert(
                        opt.to_owned(),
                        Hierarchy {
                            mount: host.at(Path::new(&m.mount_point)),
                            own,
                        },
                    );
                }
            }
            "cgroup2" if layout.v2.is_none() => {
                let own = match &own_v2 {
                    Some(p) => own_relative(p, &m.root, "cgroup2")?,
                    None => PathBuf::new(),
                };
                let mount = host.at(Path::new(&m.mount_point));
                let controllers =
                    std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
                layout.v2_controllers = controllers
                    .split_whitespace()
                    // A controller bound to a v1 hierarchy cannot be used in v2.
                    .map(str::to_owned)
                    .collect();
                layout.v2 = Some(Hierarchy { mount, own });
            }
            _ => {}
        }
    }
    let v1_names: BTreeSet<String> = layout.v1.keys().cloned().collect();
    layout.v2_controllers.retain(|c| !v1_names.contains(c));
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_spaces() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn self_cgroup_lines() {
        let (v1, v2) = parse_self_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/u\n");
        assert_eq!(v1.get("memory").map(String::as_str), Some("/a/b"));
        assert_eq!(v1.get("cpuacct").map(String::as_str), Some("/"));
        assert_eq!(v2.as_deref(), Some("/u"));
    }

    #[test]
    fn own_relative_to_mount_root() {
        assert_eq!(
            own_relative("/a/b", "/", "x").unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(own_relative("/a/b", "/a", "x").unwrap(), PathBuf::from("b"));
        assert!(own_relative("/c", "/a", "x").is_err());
    }
}
