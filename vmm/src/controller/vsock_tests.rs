//! `PUT /vsock` makes the device and its host socket at the request (`vsock.rs`).

use super::tests::{controller, err, Log};
use super::*;
use crate::resources::VsockConfig;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

fn put(uds_path: &Path, guest_cid: u32) -> ApiRequest {
    ApiRequest::PutVsock(VsockConfig {
        vsock_id: None,
        guest_cid,
        uds_path: uds_path.to_string_lossy().into_owned(),
    })
}

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// A fresh directory for one test's sockets.
fn sockets(name: &str) -> std::path::PathBuf {
    let d = crate::test_scratch::dir("kiln-controller-vsock").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_socket_is_bound_at_the_request_and_the_start_gets_that_device() {
    let d = sockets("bound");
    let sock = d.join("v.sock");
    let mut h = controller(&Log::default());
    assert!(h.c.made_vsock().is_none());
    h.handle(put(&sock, 3)).unwrap();
    assert!(
        is_socket(&sock),
        "no socket at {} after the PUT",
        sock.display()
    );
    let made = h.c.made_vsock().expect("the device made at the PUT");
    let cfg = h.c.resources.vsock.clone().unwrap();
    assert!(made.lock().unwrap().made_for(&cfg));
    // It listens: a host connection is accepted by the kernel before any start.
    std::os::unix::net::UnixStream::connect(&sock).unwrap();
}

#[test]
fn a_second_put_replaces_the_device_and_its_socket() {
    let d = sockets("replace");
    let (first, second) = (d.join("a.sock"), d.join("b.sock"));
    let mut h = controller(&Log::default());
    h.handle(put(&first, 3)).unwrap();
    // The same path again (the earlier socket goes first), then another CID.
    h.handle(put(&first, 3)).unwrap();
    h.handle(put(&first, 4)).unwrap();
    assert_eq!(h.c.made_vsock().unwrap().lock().unwrap().guest_cid(), 4);
    assert!(is_socket(&first));
    // Another path: the earlier socket file is removed.
    h.handle(put(&second, 5)).unwrap();
    assert!(!first.exists(), "{} was left behind", first.display());
    assert!(is_socket(&second));
    assert_eq!(h.c.resources.vsock.as_ref().unwrap().guest_cid, 5);
}

#[test]
fn a_refused_put_keeps_the_configuration_and_never_replaces_a_file() {
    let d = sockets("refused");
    let sock = d.join("v.sock");
    let taken = d.join("taken");
    std::fs::write(&taken, b"the orchestrator's").unwrap();
    let mut h = controller(&Log::default());
    h.handle(put(&sock, 3)).unwrap();
    let msg = err(h.handle(put(&taken, 3)));
    assert!(msg.contains("a file already exists there"), "{msg}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"the orchestrator's");
    // The earlier configuration stands; InstanceStart makes its device again.
    assert_eq!(
        h.c.resources.vsock.as_ref().unwrap().uds_path,
        sock.to_string_lossy()
    );
    assert!(h.c.made_vsock().is_none());
    // A file put where the earlier socket was is not the VMM's to remove either.
    h.handle(put(&sock, 3)).unwrap();
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, b"not a socket").unwrap();
    h.handle(put(&d.join("w.sock"), 3)).unwrap();
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
}
