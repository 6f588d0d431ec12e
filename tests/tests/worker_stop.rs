//! `kiln serve` stops on SIGTERM whatever became of its socket's path. It used to wake its
//! accept loop by connecting to that path, so a path removed (an operator's clean-up, a test's
//! scratch directory) or bound again by another process left a worker that ignored SIGTERM
//! for ever; it now shuts its listening socket down.
//!
//! Needs root, /dev/kvm and the workspace binaries (the worker's test harness).

use std::time::{Duration, Instant};

use kiln_tests::worker::{invoke, Worker};

#[test]
fn sigterm_stops_the_worker_after_its_socket_path_was_removed() {
    let mut w = Worker::new();
    let mut server = w.start();
    // A warm instance, so that the stop also has a microVM and a jail to remove.
    let answer = invoke(&w.socket, "echo", r#"{"stop":1}"#)
        .expect("the worker answers")
        .expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    std::fs::remove_file(&w.socket).expect("remove the socket's path");
    // SAFETY: kill(2) with the worker's pid, which is not reaped yet.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().expect("try_wait") {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = server.kill();
            let _ = server.wait();
            panic!(
                "kiln serve ignored SIGTERM for 30 s once its socket's path was gone\n{}",
                w.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "kiln serve: {status}\n{}", w.log_tail());
    let left = w.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}\n{}", w.log_tail());
}
