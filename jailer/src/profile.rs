//! The tenant profile (`--profile FILE`): a JSON file with the tenant's cgroup limits,
//! rlimits, the size of its `/run`, egress allow-list and extra Landlock rules. Unknown fields are errors, so a typo
//! never silently drops a limit. Values are validated in `args/`, where flags override them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest profile file read (a profile is a few hundred bytes).
const MAX_PROFILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("--profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: kiln_hostfs::InputError,
    },
    #[error("--profile {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The whole profile. Every section is optional.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub cgroup: CgroupLimits,
    #[serde(default)]
    pub rlimits: Rlimits,
    #[serde(default)]
    pub run: RunFs,
    #[serde(default)]
    pub egress: Egress,
    #[serde(default)]
    pub landlock: LandlockExtra,
}

/// Portable cgroup limits, translated to v1 or v2 files by the cgroup module.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupLimits {
    /// CPU time allowed per period, in microseconds (v1 `cpu.cfs_quota_us`, v2 `cpu.max`).
    pub cpu_quota_us: Option<u64>,
    /// Length of the CPU accounting period, in microseconds (default 100000).
    pub cpu_period_us: Option<u64>,
    /// CPUs the jail may run on, in cpuset list syntax (`0-1,3`).
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the jail may allocate from, in cpuset list syntax.
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes, guest memory included (v1 `memory.limit_in_bytes`, v2
    /// `memory.max`).
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks (processes and threads) in the jail.
    pub pids_max: Option<u64>,
    /// Huge pages the jail may use, in bytes, per huge page size (the hugetlb controller:
    /// v1 `hugetlb.<size>.limit_in_bytes`, v2 `hugetlb.<size>.max`). Absent or 0: none, and
    /// the jail's seccomp filter refuses `MAP_HUGETLB` and `MFD_HUGETLB`.
    pub hugetlb_bytes: Option<u64>,
}

/// The jail's `/run`: a tmpfs of its own, mounted by the jailer on the host side (so that
/// the orchestrator sees the sockets in it), whose pages count against the jail's memory
/// cgroup.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFs {
    /// Its size limit in bytes (tmpfs `size=`).
    pub size_bytes: Option<u64>,
    /// How many files, sockets and directories it holds, itself included (tmpfs
    /// `nr_inodes=`).
    pub inodes: Option<u64>,
}

/// Resource limits (soft = hard = value); the jailer can only lower them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    pub no_file: Option<u64>,
    pub fsize: Option<u64>,
    pub memlock: Option<u64>,
    pub nproc: Option<u64>,
    pub core: Option<u64>,
}

/// The tenant's egress policy: everything not allowed here is dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    pub allow: Vec<EgressEntry>,
}

/// One allow-list entry as written in the profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressEntry {
    pub proto: String,
    pub cidr: String,
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// Landlock rules added to the ones the jailer derives from the jail's own files.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockExtra {
    /// Extra paths inside the jail (absolute, as the VMM sees them).
    #[serde(default)]
    pub paths: Vec<LandlockPath>,
    /// TCP ports the VMM may connect to (none by default: the VMM needs no TCP).
    #[serde(default)]
    pub tcp_connect: Vec<u16>,
    /// TCP ports the VMM may bind (none by default).
    #[serde(default)]
    pub tcp_bind: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockPath {
    pub path: String,
    pub access: String,
}

impl Profile {
    /// Reads and parses a profile file under the project's rule for input files
    /// (`kiln_hostfs::read_text`: a regular file or a pipe, opened without blocking, at most
    /// [`MAX_PROFILE_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = kiln_hostfs::read_text(path, MAX_PROFILE_BYTES).map_err(|source| {
            ProfileError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Self::parse(path, &text)
    }

    /// Parses profile text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ProfileError> {
        serde_json::from_str(text).map_err(|source| ProfileError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile, String> {
        Profile::parse(Path::new("p.json"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_profile_is_all_defaults() {
        assert_eq!(parse("{}").unwrap(), Profile::default());
    }

    #[test]
    fn full_profile_parses() {
        let p = parse(
            r#"{"cgroup": {"cpu_quota_us": 50000, "cpu_period_us": 100000, "cpuset_cpus": "0",
                "cpuset_mems": "0", "memory_bytes": 1048576, "pids_max": 10},
               "rlimits": {"no_file": 64, "fsize": 1, "memlock": 2, "nproc": 3, "core": 0},
               "run": {"size_bytes": 65536, "inodes": 16},
               "egress": {"allow": [{"proto": "tcp", "cidr": "10.0.0.0/8", "ports": [443]}]},
               "landlock": {"paths": [{"path": "/data", "access": "ro"}], "tcp_connect": [443]}}"#,
        )
        .unwrap();
        assert_eq!(p.cgroup.pids_max, Some(10));
        assert_eq!(p.rlimits.no_file, Some(64));
        assert_eq!(p.run.size_bytes, Some(65536));
        assert_eq!(p.run.inodes, Some(16));
        assert_eq!(p.egress.allow.len(), 1);
        assert_eq!(p.landlock.tcp_connect, vec![443]);
    }

    #[test]
    fn unknown_fields_are_errors_naming_the_field() {
        let e = parse(r#"{"cgroups": {}}"#).unwrap_err();
        assert!(e.contains("unknown field `cgroups`"), "{e}");
        let e = parse(r#"{"cgroup": {"memory": 5}}"#).unwrap_err();
        assert!(e.contains("unknown field `memory`"), "{e}");
        let e =
            parse(r#"{"egress": {"allow": [{"proto": "tcp", "cidr": "1.2.3.4/32", "port": 1}]}}"#)
                .unwrap_err();
        assert!(e.contains("unknown field `port`"), "{e}");
    }

    /// Found while writing the `jailer_args` fuzz target (its seed `seed-profile-dev-zero`
    /// replays it): `--profile /dev/zero` was read without end (the size check saw 0 bytes)
    /// until the jailer ran out of memory. Devices are refused without reading, files are
    /// read up to the limit.
    #[test]
    fn endless_files_are_refused_not_read_forever() {
        let e = Profile::load(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, ProfileError::Read { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("--profile /dev/zero: is a character device, not a regular file"),
            "{e}"
        );
        let big = std::env::temp_dir().join(format!("kiln-profile-big-{}", std::process::id()));
        let len = usize::try_from(MAX_PROFILE_BYTES + 1).unwrap();
        std::fs::write(&big, vec![b' '; len]).unwrap();
        let e = Profile::load(&big).unwrap_err();
        std::fs::remove_file(&big).unwrap();
        assert!(e.to_string().contains("larger than"), "{e}");
        let e = Profile::load(Path::new("/nonexistent/profile.json")).unwrap_err();
        assert!(matches!(e, ProfileError::Read { .. }), "{e}");
    }

    /// A FIFO is opened without blocking: with no writer it reads as empty, so the error is
    /// the JSON parser's, naming the flag and the file (it used to be refused as "not a
    /// regular file"; a pipe is how some callers hand over a generated profile).
    #[test]
    fn a_fifo_without_a_writer_is_an_empty_profile_not_a_hang() {
        let dir = std::env::temp_dir().join(format!("kiln-profile-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = Profile::load(&fifo).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(e, ProfileError::Parse { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("--profile {}: EOF while parsing", fifo.display())),
            "{text}"
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        let e = parse(r#"{"cgroup": {"pids_max": -1}}"#).unwrap_err();
        assert!(e.contains("p.json"), "{e}");
        let e = parse(r#"{"landlock": {"tcp_connect": [70000]}}"#).unwrap_err();
        assert!(e.contains("70000"), "{e}");
        assert!(parse("not json").is_err());
    }
}
