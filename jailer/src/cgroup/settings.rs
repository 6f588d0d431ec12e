//! The settings a jail's cgroups get, before they are routed to a hierarchy: the profile's
//! portable limits (cpu, cpuset, memory, pids, hugetlb) translated to the v1 and the v2
//! files that hold them, and the `--cgroup FILE=VALUE` flags that replace them.

use std::path::Path;

use super::Host;
use crate::args::CgroupConfig;

/// A setting before it is routed to a hierarchy.
pub(super) struct Wanted {
    pub controller: String,
    /// (file, value, optional) for v1 and v2; they differ for cpu quota, memory and
    /// hugetlb. An optional file is skipped when the kernel does not have it.
    pub v1: Vec<(String, String, bool)>,
    pub v2: Vec<(String, String, bool)>,
    pub origin: String,
    /// Without the controller the jail cannot start; else it is skipped where the host does
    /// not have it (hugetlb: the jail's seccomp filter refuses huge pages anyway).
    pub required: bool,
}

/// The host's huge page sizes as the hugetlb controller names them (`2MB`, `1GB`), from
/// `/sys/kernel/mm/hugepages/hugepages-<N>kB`.
pub(super) fn huge_page_sizes(host: &Host) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(host.at(Path::new("/sys/kernel/mm/hugepages"))) else {
        return Vec::new();
    };
    let mut sizes: Vec<(u64, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let kb: u64 = name
                .to_str()?
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let label = if kb >= 1 << 20 && kb.is_multiple_of(1 << 20) {
                format!("{}GB", kb >> 20)
            } else if kb >= 1 << 10 && kb.is_multiple_of(1 << 10) {
                format!("{}MB", kb >> 10)
            } else {
                format!("{kb}KB")
            };
            Some((kb, label))
        })
        .collect();
    sizes.sort();
    sizes.into_iter().map(|(_, label)| label).collect()
}

pub(super) fn typed(config: &CgroupConfig, huge_page_sizes: &[String]) -> Vec<Wanted> {
    let l = &config.limits;
    let mut out = Vec::new();
    if let Some(quota) = l.cpu_quota_us {
        let period = l.cpu_period_us.unwrap_or(100_000);
        out.push(Wanted {
            controller: "cpu".into(),
            v1: vec![
                ("cpu.cfs_period_us".into(), period.to_string(), false),
                ("cpu.cfs_quota_us".into(), quota.to_string(), false),
            ],
            v2: vec![("cpu.max".into(), format!("{quota} {period}"), false)],
            origin: "profile cgroup.cpu_quota_us".into(),
            required: true,
        });
    }
    for (file, value, field) in [
        ("cpuset.cpus", &l.cpuset_cpus, "cpuset_cpus"),
        ("cpuset.mems", &l.cpuset_mems, "cpuset_mems"),
    ] {
        if let Some(v) = value {
            out.push(Wanted {
                controller: "cpuset".into(),
                v1: vec![(file.into(), v.clone(), false)],
                v2: vec![(file.into(), v.clone(), false)],
                origin: format!("profile cgroup.{field}"),
                required: true,
            });
        }
    }
    if let Some(bytes) = l.memory_bytes {
        out.push(Wanted {
            controller: "memory".into(),
            v1: vec![("memory.limit_in_bytes".into(), bytes.to_string(), false)],
            v2: vec![
                ("memory.max".into(), bytes.to_string(), false),
                // The limit must not be escaped through swap.
                ("memory.swap.max".into(), "0".into(), true),
            ],
            origin: "profile cgroup.memory_bytes".into(),
            required: true,
        });
    }
    if let Some(n) = l.pids_max {
        out.push(Wanted {
            controller: "pids".into(),
            v1: vec![("pids.max".into(), n.to_string(), false)],
            v2: vec![("pids.max".into(), n.to_string(), false)],
            origin: "profile cgroup.pids_max".into(),
            required: true,
        });
    }
    // Huge pages are outside the memory controller: every jail gets the hugetlb limit,
    // 0 unless the profile grants some. The reservation limits (`rsvd`, Linux 5.7) make a
    // mapping past the limit fail at mmap time instead of at the first touch.
    if !huge_page_sizes.is_empty() {
        let bytes = l.hugetlb_bytes.unwrap_or(0).to_string();
        let mut w = Wanted {
            controller: "hugetlb".into(),
            v1: Vec::new(),
            v2: Vec::new(),
            origin: "profile cgroup.hugetlb_bytes".into(),
            required: false,
        };
        for size in huge_page_sizes {
            w.v1.extend([
                (
                    format!("hugetlb.{size}.limit_in_bytes"),
                    bytes.clone(),
                    false,
                ),
                (
                    format!("hugetlb.{size}.rsvd.limit_in_bytes"),
                    bytes.clone(),
                    true,
                ),
            ]);
            w.v2.extend([
                (format!("hugetlb.{size}.max"), bytes.clone(), false),
                (format!("hugetlb.{size}.rsvd.max"), bytes.clone(), true),
            ]);
        }
        out.push(w);
    }
    // `--cgroup FILE=VALUE` replaces a typed setting writing the same file.
    for (file, value) in &config.raw {
        for w in &mut out {
            w.v1.retain(|(f, _, _)| f != file);
            w.v2.retain(|(f, _, _)| f != file);
        }
        let controller = file.split('.').next().unwrap_or_default().to_owned();
        out.push(Wanted {
            controller,
            v1: vec![(file.clone(), value.clone(), false)],
            v2: vec![(file.clone(), value.clone(), false)],
            origin: format!("--cgroup {file}={value}"),
            required: true,
        });
    }
    out
}
