//! `pmem`: the config file's section, `PUT /pmem/{id}`'s rules (ids, files, the one root
//! device across drives and pmem devices) and `GET /vm/config`.

use super::tests::config;
use super::*;

fn file(name: &str, len: usize) -> String {
    let dir = crate::test_scratch::dir("kiln-pmem-res");
    let p = dir.join(name);
    std::fs::write(&p, vec![7u8; len]).unwrap();
    p.display().to_string()
}

fn pmem(id: &str, path: &str, root: bool) -> PmemConfig {
    PmemConfig {
        id: id.into(),
        path_on_host: path.into(),
        root_device: root,
        ..PmemConfig::default()
    }
}

#[test]
fn the_config_file_section_round_trips_through_vm_config() {
    let (a, b) = (file("a", 4096), file("b", 100));
    let text = config(&format!(
        r#", "pmem": [{{"id": "p0", "path_on_host": "{a}", "root_device": true}},
                     {{"id": "p1", "path_on_host": "{b}", "read_only": true, "root_device": null,
                       "rate_limiter": {{"ops": {{"size": 10, "refill_time": 1000}}}}}}]"#
    ));
    let res = VmResources::from_json(&text).unwrap();
    assert_eq!(res.pmem.len(), 2);
    assert!(res.pmem[0].root_device && !res.pmem[0].read_only);
    assert!(res.pmem[1].read_only && !res.pmem[1].root_device);
    let out = serde_json::to_value(res.to_config()).unwrap();
    assert_eq!(
        out["pmem"][0],
        serde_json::json!({"id": "p0", "path_on_host": a, "root_device": true,
                           "read_only": false, "rate_limiter": null})
    );
    assert_eq!(out["pmem"][1]["rate_limiter"]["ops"]["size"], 10);
    // What GET /vm/config wrote is a config the VMM reads back to the same resources.
    let again = serde_json::to_string(&res.to_config()).unwrap();
    assert_eq!(VmResources::from_json(&again).unwrap(), res);
}

#[test]
fn bad_devices_are_refused_naming_what_was_wrong() {
    let a = file("c", 10);
    let dir = std::env::temp_dir().display().to_string();
    let empty = file("empty", 0);
    let mut r = VmResources::default();
    let cases: Vec<(Option<&str>, PmemConfig, String)> = vec![
        (
            None,
            pmem("bad id!", &a, false),
            "pmem id \"bad id!\" is invalid".into(),
        ),
        (
            Some("other"),
            pmem("p", &a, false),
            "pmem id in the path (\"other\") differs from the id in the body (\"p\")".into(),
        ),
        (
            None,
            pmem("p", "/nonexistent/kiln-pmem", false),
            "pmem: the backing file \"/nonexistent/kiln-pmem\" cannot be opened: No such file"
                .into(),
        ),
        (
            None,
            PmemConfig {
                read_only: true,
                ..pmem("p", &dir, false)
            },
            "it is a directory, not a regular file".into(),
        ),
        (
            None,
            pmem("p", &empty, false),
            format!("pmem: the backing file {empty:?} is empty"),
        ),
    ];
    for (path_id, cfg, want) in cases {
        let err = r.put_pmem(path_id, cfg).unwrap_err().to_string();
        assert!(err.contains(&want), "{err:?} lacks {want:?}");
    }
    assert!(r.pmem.is_empty());
}

#[test]
fn one_root_device_across_drives_and_pmem() {
    let (a, b) = (file("r1", 10), file("r2", 10));
    let mut r = VmResources::default();
    r.put_pmem(Some("p0"), pmem("p0", &a, true)).unwrap();
    // The same id replaces the device in its place.
    r.put_pmem(Some("p1"), pmem("p1", &b, false)).unwrap();
    r.put_pmem(Some("p0"), pmem("p0", &b, true)).unwrap();
    assert_eq!(
        r.pmem.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["p0", "p1"]
    );
    assert_eq!(r.pmem[0].path_on_host, b);
    let err = r.put_pmem(None, pmem("p1", &a, true)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pmem: \"p0\" is already the root device; only one pmem device can have root_device true"
    );
    let drive = DriveConfig {
        drive_id: "rootfs".into(),
        path_on_host: a.clone(),
        is_root_device: true,
        ..DriveConfig::default()
    };
    let err = r.put_drive(None, drive.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "drives: pmem device \"p0\" is already the root device; only one drive or pmem device can be the root device"
    );
    // Without the pmem root, the drive may be the root; then no pmem device can be.
    r.put_pmem(None, pmem("p0", &a, false)).unwrap();
    r.put_drive(None, drive).unwrap();
    let err = r.put_pmem(None, pmem("p1", &b, true)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pmem: drive \"rootfs\" is already the root device; only one drive or pmem device can be the root device"
    );
}

#[test]
fn patch_bodies_take_only_the_id_and_the_rate_limiter() {
    let u: PmemUpdate =
        parse_json(r#"{"id": "p0", "rate_limiter": {"ops": {"size": 1, "refill_time": 10}}}"#)
            .unwrap();
    assert!(u.clone().validated(Some("p0")).is_ok());
    assert!(u.validated(Some("p1")).is_err());
    let err = parse_json::<PmemUpdate>(r#"{"id": "p0", "path_on_host": "/x"}"#).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `path_on_host`"),
        "{err}"
    );
}
