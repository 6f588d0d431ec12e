//! Making and removing the jail's cgroup directories: parents shared with other jails, the
//! mark a jailer leaves on the parents it makes, and which of them a jail's clean-up removes.

use std::path::Path;

use super::*;

/// The record of a jail whose cgroup is `dir`, the jailer's own being `origin`, that made
/// the directories `created` (paths in the fake tree `f`).
fn record(f: &Fake, dir: &str, origin: &str, created: &[&str]) -> CgroupRecord {
    CgroupRecord {
        dir: f.path(dir),
        origin: f.path(origin),
        created: created.iter().map(|c| f.path(c)).collect(),
        done: true,
    }
}

#[test]
fn remove_is_idempotent_and_keeps_shared_parents_in_use() {
    let f = Fake::new("remove");
    let rec = record(&f, "/cg/kiln/vm", "/cg", &["/cg/kiln", "/cg/kiln/vm"]);
    f.dir("/cg/kiln/vm");
    f.dir("/cg/kiln/other");
    remove(&rec, std::time::Instant::now()).unwrap();
    assert!(!f.path("/cg/kiln/vm").exists());
    assert!(f.path("/cg/kiln").exists(), "still holds another jail");
    remove(&rec, std::time::Instant::now()).unwrap();
    std::fs::remove_dir(f.path("/cg/kiln/other")).unwrap();
    remove(&rec, std::time::Instant::now()).unwrap();
    assert!(!f.path("/cg/kiln").exists());
}

/// Gives `dir` the mark of a parent level made by a jailer.
fn mark(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::Permissions::from_mode(0o700 | location::MADE_BY_A_JAILER);
    std::fs::set_permissions(dir, mode).unwrap();
}

#[test]
fn create_marks_the_parents_it_makes_and_walks_again_when_one_goes() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fake::new("mark");
    f.dir("/cg");
    let at = Location::new(f.path("/cg"), f.path("/cg"), "kiln/pool/vm".into(), true);
    // Another jail's clean-up removes the new `kiln` once, right after it is made.
    let mut removed = false;
    let made = at
        .create(
            |_| Ok(()),
            |dir| {
                if !removed && dir.ends_with("kiln") {
                    removed = true;
                    std::fs::remove_dir(dir).unwrap();
                }
                Ok(())
            },
        )
        .unwrap();
    assert!(removed);
    let levels = ["/cg/kiln", "/cg/kiln/pool", "/cg/kiln/pool/vm"].map(|p| f.path(p));
    assert_eq!(made, levels);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let made = mode(&levels[2]);
    assert_eq!(
        made & location::MADE_BY_A_JAILER,
        0,
        "the jail's own is not marked"
    );
    // The mark is added to the permission bits the directory was made with.
    assert_eq!(mode(&levels[0]), made | location::MADE_BY_A_JAILER);
    assert_eq!(mode(&levels[1]), made | location::MADE_BY_A_JAILER);
    assert!(!location::made_by_a_jailer(&levels[2]));
    assert!(location::made_by_a_jailer(&levels[1]));
}

#[test]
fn create_gives_up_when_a_level_keeps_going() {
    let f = Fake::new("vanish");
    f.dir("/cg");
    let at = Location::new(f.path("/cg"), f.path("/cg"), "kiln/vm".into(), true);
    let mut walks = 0;
    let err = at
        .create(
            |_| Ok(()),
            |dir| {
                if dir.ends_with("kiln") {
                    walks += 1;
                    std::fs::remove_dir(dir).unwrap();
                }
                Ok(())
            },
        )
        .unwrap_err();
    assert!(matches!(err, CgroupError::Mkdir { .. }), "{err}");
    assert_eq!(walks, 3, "walked down again twice, then gave up");
    assert!(!f.path("/cg/kiln").exists());
}

#[test]
fn the_last_jail_out_removes_the_parents_a_jailer_made() {
    let f = Fake::new("last-out");
    // `kiln` and `kiln/pool` were made by a jail that has ended; this one found them.
    f.dir("/cg/kiln/pool/vm");
    mark(&f.path("/cg/kiln"));
    mark(&f.path("/cg/kiln/pool"));
    f.dir("/cg/kiln/other");
    let rec = record(&f, "/cg/kiln/pool/vm", "/cg", &["/cg/kiln/pool/vm"]);
    remove(&rec, std::time::Instant::now()).unwrap();
    assert!(
        !f.path("/cg/kiln/pool").exists(),
        "empty and made by a jailer"
    );
    assert!(f.path("/cg/kiln").exists(), "still holds `other`");
    std::fs::remove_dir(f.path("/cg/kiln/other")).unwrap();
    f.dir("/cg/kiln/pool/vm");
    mark(&f.path("/cg/kiln/pool"));
    remove(&rec, std::time::Instant::now()).unwrap();
    assert!(!f.path("/cg/kiln").exists());
    assert!(f.path("/cg").exists());
}

#[test]
fn parents_nobody_marked_and_the_jailers_own_cgroup_stay() {
    let f = Fake::new("keep");
    // An orchestrator's `kiln` (not marked), and a marked level above the jailer's own
    // cgroup `/cg/own` (--parent-cgroup-relative): neither is the jail's to remove.
    f.dir("/cg/own/kiln/vm");
    mark(&f.path("/cg/own"));
    let rec = record(&f, "/cg/own/kiln/vm", "/cg/own", &["/cg/own/kiln/vm"]);
    remove(&rec, std::time::Instant::now()).unwrap();
    assert!(
        f.path("/cg/own/kiln").exists(),
        "not marked, not made by this jail"
    );
    std::fs::remove_dir(f.path("/cg/own/kiln")).unwrap();
    f.dir("/cg/own/kiln/vm");
    mark(&f.path("/cg/own/kiln"));
    remove(&rec, std::time::Instant::now()).unwrap();
    assert!(!f.path("/cg/own/kiln").exists());
    assert!(f.path("/cg/own").exists(), "the jailer's own cgroup");
}
