//! The cgroup logic against fake cgroupfs trees in a temporary directory: v1, v2 and hybrid.
//! How the directories are made and removed, shared parents and a jailer's mark included, is
//! in `lifecycle`.

mod lifecycle;

use std::path::{Path, PathBuf};

use super::*;
use crate::profile::CgroupLimits;
use crate::state::JailState;

struct Fake {
    root: PathBuf,
}

impl Fake {
    fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!(
            "kiln-cgroup-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Fake { root }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn file(&self, abs: &str, content: &str) {
        let p = self.path(abs);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn dir(&self, abs: &str) {
        std::fs::create_dir_all(self.path(abs)).unwrap();
    }

    fn read(&self, abs: &str) -> String {
        std::fs::read_to_string(self.path(abs))
            .unwrap_or_else(|e| panic!("{abs}: {e}"))
            .trim()
            .to_owned()
    }

    fn host(&self, mountinfo: &str, self_cgroup: &str) -> Host {
        Host {
            root: self.root.clone(),
            mountinfo: mountinfo.to_owned(),
            self_cgroup: self_cgroup.to_owned(),
            fake: true,
        }
    }

    fn journal(&self) -> Journal {
        let dir = self.path("/jail");
        std::fs::create_dir_all(&dir).unwrap();
        Journal::create(JailState {
            id: "vm".into(),
            exec_dir: self.root.clone(),
            jail_dir: dir,
            ..Default::default()
        })
        .unwrap()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const HYBRID_MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/session/abc
3:cpuset:/
2:cpu,cpuacct:/
0::/
";

fn hybrid(name: &str) -> Fake {
    let f = Fake::new(name);
    for d in ["cpu,cpuacct", "memory/session/abc", "pids", "systemd"] {
        f.dir(&format!("/sys/fs/cgroup/{d}"));
    }
    f.file("/sys/fs/cgroup/cpuset/cpuset.cpus", "0-1\n");
    f.file("/sys/fs/cgroup/cpuset/cpuset.mems", "0\n");
    f.file("/sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n");
    f
}

fn config(version: CgroupVersion, relative: bool) -> CgroupConfig {
    CgroupConfig {
        version,
        parent: PathBuf::from("kiln"),
        relative,
        limits: CgroupLimits::default(),
        raw: Vec::new(),
    }
}

fn full_limits() -> CgroupLimits {
    CgroupLimits {
        cpu_quota_us: Some(50_000),
        cpu_period_us: None,
        cpuset_cpus: Some("0".into()),
        cpuset_mems: None,
        memory_bytes: Some(1 << 20),
        pids_max: Some(10),
        hugetlb_bytes: None,
    }
}

fn dirs(plan: &Plan) -> Vec<PathBuf> {
    plan.groups.iter().map(|g| g.dir().to_path_buf()).collect()
}

#[test]
fn detects_the_hybrid_layout() {
    let f = hybrid("detect");
    let layout = detect(&f.host(HYBRID_MOUNTINFO, HYBRID_SELF)).unwrap();
    assert_eq!(
        layout.v1.keys().map(String::as_str).collect::<Vec<_>>(),
        ["cpu", "cpuacct", "cpuset", "memory", "pids"]
    );
    assert_eq!(
        layout.v1["memory"].own,
        PathBuf::from("session/abc"),
        "own memory cgroup from /proc/self/cgroup"
    );
    assert_eq!(layout.v1["cpu"].mount, f.path("/sys/fs/cgroup/cpu,cpuacct"));
    assert_eq!(layout.v2.unwrap().mount, f.path("/sys/fs/cgroup/unified"));
    assert_eq!(
        layout.v2_controllers.into_iter().collect::<Vec<_>>(),
        ["hugetlb"]
    );
}

#[test]
fn v1_limits_are_written_before_the_process_joins() {
    let f = hybrid("v1");
    let host = f.host(HYBRID_MOUNTINFO, HYBRID_SELF);
    let mut cfg = config(CgroupVersion::V1, true);
    cfg.limits = full_limits();
    let plan = plan(&host, &cfg, "vm").unwrap();
    assert_eq!(
        dirs(&plan),
        [
            f.path("/sys/fs/cgroup/cpu,cpuacct/kiln/vm"),
            f.path("/sys/fs/cgroup/cpuset/kiln/vm"),
            f.path("/sys/fs/cgroup/memory/session/abc/kiln/vm"),
            f.path("/sys/fs/cgroup/pids/kiln/vm"),
        ]
    );
    let mut journal = f.journal();
    plan.apply(&mut journal, &mut Clock::start()).unwrap();

    assert_eq!(
        f.read("/sys/fs/cgroup/cpu,cpuacct/kiln/vm/cpu.cfs_quota_us"),
        "50000"
    );
    assert_eq!(
        f.read("/sys/fs/cgroup/cpu,cpuacct/kiln/vm/cpu.cfs_period_us"),
        "100000"
    );
    assert_eq!(f.read("/sys/fs/cgroup/cpuset/kiln/vm/cpuset.cpus"), "0");
    // Inherited down from the root through the new parent.
    assert_eq!(f.read("/sys/fs/cgroup/cpuset/kiln/cpuset.cpus"), "0-1");
    assert_eq!(f.read("/sys/fs/cgroup/cpuset/kiln/vm/cpuset.mems"), "0");
    assert_eq!(
        f.read("/sys/fs/cgroup/memory/session/abc/kiln/vm/memory.limit_in_bytes"),
        "1048576"
    );
    assert_eq!(f.read("/sys/fs/cgroup/pids/kiln/vm/pids.max"), "10");
    // v1: "0" (the calling thread) to `tasks`, the fast path for a single-threaded process.
    for d in ["cpu,cpuacct", "cpuset", "memory/session/abc", "pids"] {
        assert_eq!(f.read(&format!("/sys/fs/cgroup/{d}/kiln/vm/tasks")), "0");
    }

    let records = &journal.state.cgroups;
    assert_eq!(records.len(), 4);
    assert_eq!(
        records[2].created,
        [
            f.path("/sys/fs/cgroup/memory/session/abc/kiln"),
            f.path("/sys/fs/cgroup/memory/session/abc/kiln/vm"),
        ]
    );
    assert_eq!(
        records[2].origin,
        f.path("/sys/fs/cgroup/memory/session/abc")
    );
    // The state on disk matches.
    let on_disk = Journal::load(&f.path("/jail"), "vm").unwrap().unwrap();
    assert_eq!(on_disk.cgroups, *records);
}

#[test]
fn without_limits_the_jail_still_gets_a_pids_cgroup() {
    let f = hybrid("nolimits");
    let plan = plan(
        &f.host(HYBRID_MOUNTINFO, HYBRID_SELF),
        &config(CgroupVersion::Auto, false),
        "vm",
    )
    .unwrap();
    assert_eq!(dirs(&plan), [f.path("/sys/fs/cgroup/pids/kiln/vm")]);
    assert!(plan.settings.is_empty());
}

#[test]
fn raw_flags_override_typed_limits() {
    let f = hybrid("raw");
    let mut cfg = config(CgroupVersion::Auto, false);
    cfg.limits.pids_max = Some(10);
    cfg.raw = vec![("pids.max".into(), "5".into())];
    let plan = plan(&f.host(HYBRID_MOUNTINFO, HYBRID_SELF), &cfg, "vm").unwrap();
    let pids: Vec<_> = plan
        .settings
        .iter()
        .filter(|s| s.file == "pids.max")
        .collect();
    assert_eq!(pids.len(), 1);
    assert_eq!(pids[0].value, "5");
    assert_eq!(pids[0].origin, "--cgroup pids.max=5");
}

#[test]
fn hybrid_routes_v2_only_controllers_to_the_unified_hierarchy() {
    let f = hybrid("hybrid");
    let mut cfg = config(CgroupVersion::Auto, false);
    cfg.raw = vec![
        ("hugetlb.2MB.max".into(), "0".into()),
        ("pids.max".into(), "7".into()),
    ];
    let host = f.host(HYBRID_MOUNTINFO, HYBRID_SELF);
    let plan = plan(&host, &cfg, "vm").unwrap();
    assert_eq!(
        dirs(&plan),
        [
            f.path("/sys/fs/cgroup/unified/kiln/vm"),
            f.path("/sys/fs/cgroup/pids/kiln/vm"),
        ]
    );
    plan.apply(&mut f.journal(), &mut Clock::start()).unwrap();
    assert_eq!(
        f.read("/sys/fs/cgroup/unified/kiln/vm/hugetlb.2MB.max"),
        "0"
    );
    assert_eq!(
        f.read("/sys/fs/cgroup/unified/cgroup.subtree_control"),
        "+hugetlb"
    );
    assert_eq!(
        f.read("/sys/fs/cgroup/unified/kiln/cgroup.subtree_control"),
        "+hugetlb"
    );
    assert_eq!(f.read("/sys/fs/cgroup/pids/kiln/vm/pids.max"), "7");

    // Forced v1, the v2-only controller is an error naming the flag.
    let mut v1 = cfg.clone();
    v1.version = CgroupVersion::V1;
    let err = plan_err(&host, &v1);
    assert!(
        err.contains("--cgroup hugetlb.2MB.max=0") && err.contains("hugetlb"),
        "{err}"
    );
}

#[test]
fn every_jail_gets_a_hugetlb_limit_of_0_unless_the_profile_grants_huge_pages() {
    // Hybrid, as these hosts: hugetlb is only in the unified hierarchy.
    let f = hybrid("hugetlb");
    f.dir("/sys/kernel/mm/hugepages/hugepages-2048kB");
    f.dir("/sys/kernel/mm/hugepages/hugepages-1048576kB");
    let host = f.host(HYBRID_MOUNTINFO, HYBRID_SELF);
    let auto = plan(&host, &config(CgroupVersion::Auto, false), "vm").unwrap();
    assert_eq!(
        dirs(&auto),
        [
            f.path("/sys/fs/cgroup/unified/kiln/vm"),
            f.path("/sys/fs/cgroup/pids/kiln/vm"),
        ]
    );
    let born_in = auto.apply(&mut f.journal(), &mut Clock::start()).unwrap();
    for file in [
        "hugetlb.2MB.max",
        "hugetlb.2MB.rsvd.max",
        "hugetlb.1GB.max",
        "hugetlb.1GB.rsvd.max",
    ] {
        assert_eq!(
            f.read(&format!("/sys/fs/cgroup/unified/kiln/vm/{file}")),
            "0"
        );
    }
    assert_eq!(
        f.read("/sys/fs/cgroup/unified/kiln/cgroup.subtree_control"),
        "+hugetlb"
    );
    // The jail's first process is born in the v2 group (so its huge pages are charged
    // there); the jailer does not move itself in.
    assert_eq!(
        born_in.map(|f| f.dir),
        Some(f.path("/sys/fs/cgroup/unified/kiln/vm"))
    );
    assert!(!f
        .path("/sys/fs/cgroup/unified/kiln/vm/cgroup.procs")
        .exists());
    assert_eq!(f.read("/sys/fs/cgroup/pids/kiln/vm/tasks"), "0");

    // A profile's grant, on a v1 hugetlb hierarchy.
    let g = hybrid("hugetlb-v1");
    g.dir("/sys/kernel/mm/hugepages/hugepages-2048kB");
    g.dir("/sys/fs/cgroup/hugetlb");
    let mountinfo = format!(
        "{HYBRID_MOUNTINFO}42 31 0:39 / /sys/fs/cgroup/hugetlb rw,relatime - cgroup cgroup rw,hugetlb\n"
    );
    let mut cfg = config(CgroupVersion::Auto, false);
    cfg.limits.hugetlb_bytes = Some(8 << 20);
    let granted = plan(&g.host(&mountinfo, HYBRID_SELF), &cfg, "vm").unwrap();
    granted
        .apply(&mut g.journal(), &mut Clock::start())
        .unwrap();
    assert_eq!(
        g.read("/sys/fs/cgroup/hugetlb/kiln/vm/hugetlb.2MB.limit_in_bytes"),
        "8388608"
    );
    assert_eq!(
        g.read("/sys/fs/cgroup/hugetlb/kiln/vm/hugetlb.2MB.rsvd.limit_in_bytes"),
        "8388608"
    );

    // Without the controller in the hierarchies allowed (v1 forced, hugetlb only in v2),
    // the jail starts without it: seccomp still refuses huge pages.
    let v1 = plan(&host, &config(CgroupVersion::V1, false), "vm").unwrap();
    assert_eq!(dirs(&v1), [f.path("/sys/fs/cgroup/pids/kiln/vm")]);
    assert!(v1.settings.is_empty());
}

fn plan_err(host: &Host, cfg: &CgroupConfig) -> String {
    match plan(host, cfg, "vm") {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => e.to_string(),
    }
}

const V2_MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
";

#[test]
fn v2_delegates_controllers_down_the_tree() {
    let f = Fake::new("v2");
    f.file(
        "/sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory pids\n",
    );
    f.file("/sys/fs/cgroup/cgroup.subtree_control", "cpu\n");
    f.dir("/sys/fs/cgroup/user.slice");
    let host = f.host(V2_MOUNTINFO, "0::/user.slice\n");
    let mut cfg = config(CgroupVersion::Auto, false);
    cfg.limits = full_limits();
    let plan = plan(&host, &cfg, "vm").unwrap();
    assert_eq!(dirs(&plan), [f.path("/sys/fs/cgroup/kiln/vm")]);
    let mut journal = f.journal();
    plan.apply(&mut journal, &mut Clock::start()).unwrap();

    // cpu was already enabled at the root: only the others are added there.
    let root = f.read("/sys/fs/cgroup/cgroup.subtree_control");
    assert_eq!(
        root.lines().collect::<Vec<_>>(),
        ["cpu", "+cpuset", "+memory", "+pids"]
    );
    let kiln = f.read("/sys/fs/cgroup/kiln/cgroup.subtree_control");
    assert_eq!(
        kiln.lines().collect::<Vec<_>>(),
        ["+cpu", "+cpuset", "+memory", "+pids"]
    );
    assert_eq!(f.read("/sys/fs/cgroup/kiln/vm/cpu.max"), "50000 100000");
    assert_eq!(f.read("/sys/fs/cgroup/kiln/vm/cpuset.cpus"), "0");
    assert_eq!(f.read("/sys/fs/cgroup/kiln/vm/memory.max"), "1048576");
    assert_eq!(f.read("/sys/fs/cgroup/kiln/vm/memory.swap.max"), "0");
    assert_eq!(f.read("/sys/fs/cgroup/kiln/vm/pids.max"), "10");
    // v2: the jail's first process is born in the group (clone3 CLONE_INTO_CGROUP) rather
    // than the jailer moving in and its keeper out (each a wait for an RCU grace period).
    assert!(!f.path("/sys/fs/cgroup/kiln/vm/cgroup.procs").exists());
    assert_eq!(
        journal.state.cgroups[0].origin,
        f.path("/sys/fs/cgroup/user.slice")
    );
}

#[test]
fn v2_relative_nests_under_the_own_cgroup() {
    let f = Fake::new("v2rel");
    f.file("/sys/fs/cgroup/cgroup.controllers", "pids\n");
    f.dir("/sys/fs/cgroup/user.slice/s1");
    let host = f.host(V2_MOUNTINFO, "0::/user.slice/s1\n");
    let plan = plan(&host, &config(CgroupVersion::V2, true), "vm").unwrap();
    assert_eq!(
        dirs(&plan),
        [f.path("/sys/fs/cgroup/user.slice/s1/kiln/vm")]
    );
}

#[test]
fn version_and_controller_errors() {
    let f = Fake::new("errors");
    f.file("/sys/fs/cgroup/cgroup.controllers", "pids\n");
    let v2host = f.host(V2_MOUNTINFO, "0::/\n");
    let err = plan_err(&v2host, &config(CgroupVersion::V1, false));
    assert!(err.contains("--cgroup-version 1"), "{err}");
    let mut cfg = config(CgroupVersion::V2, false);
    cfg.limits.memory_bytes = Some(1);
    let err = plan_err(&v2host, &cfg);
    assert!(
        err.contains("profile cgroup.memory_bytes") && err.contains("memory"),
        "{err}"
    );

    let g = hybrid("errors-v2");
    let v1host = g.host(
        &HYBRID_MOUNTINFO.replace(
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
            "",
        ),
        HYBRID_SELF,
    );
    let err = plan_err(&v1host, &config(CgroupVersion::V2, false));
    assert!(err.contains("--cgroup-version 2"), "{err}");
}

#[test]
fn an_existing_jail_cgroup_is_refused_and_nothing_is_left() {
    let f = hybrid("exists");
    f.dir("/sys/fs/cgroup/pids/kiln/vm");
    let host = f.host(HYBRID_MOUNTINFO, HYBRID_SELF);
    let plan = plan(&host, &config(CgroupVersion::V1, false), "vm").unwrap();
    let err = plan
        .apply(&mut f.journal(), &mut Clock::start())
        .unwrap_err()
        .to_string();
    assert!(err.contains("kiln/vm"), "{err}");
}

#[test]
fn cpuset_without_values_anywhere_is_an_error() {
    let f = hybrid("cpuset");
    f.file("/sys/fs/cgroup/cpuset/cpuset.mems", "\n");
    let mut cfg = config(CgroupVersion::V1, false);
    cfg.limits.cpuset_cpus = Some("0".into());
    let plan = plan(&f.host(HYBRID_MOUNTINFO, HYBRID_SELF), &cfg, "vm").unwrap();
    let err = plan
        .apply(&mut f.journal(), &mut Clock::start())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cpuset.mems"), "{err}");
    // The directories made before the error are gone again.
    assert!(!Path::new(&f.path("/sys/fs/cgroup/cpuset/kiln")).exists());
}
