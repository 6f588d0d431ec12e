//! Waiting for the guest: its connection to the worker's vsock listener (or the VMM's end,
//! or the deadline), then its `Hello` naming the function. For a Linux guest on a kvm_pvm
//! host, whose user space cannot run, the start fails as soon as that is certain.

use super::error::InstanceError;
use super::jail::Jail;
use super::output::OutputLogs;
use crate::channel::{Channel, ChannelError};
use crate::function::Function;
use crate::sys;
use kiln_protocol::Kind;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// On a host where guest user space cannot run: how long after `Run /init` the worker still
/// waits for the guest's connection before it gives up (init normally faults at once).
const PVM_INIT_GRACE: Duration = Duration::from_secs(20);

/// True on hosts whose KVM is kvm_pvm, where guest user space cannot run
/// (shared/notes/host-kvm.md): Linux functions fail there once their kernel starts /init.
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Why a Linux guest's user space is known not to run here, once its kernel started /init.
fn user_space_failure(logs: &OutputLogs, vm_ended: bool) -> Option<InstanceError> {
    let started = logs.init_started()?;
    let detail = match logs.init_fault() {
        Some(line) => format!("init faulted: {line}"),
        None if vm_ended => "the microVM ended before init reached the host".into(),
        None if started.elapsed() >= PVM_INIT_GRACE => format!(
            "init did not reach the host within {} s",
            PVM_INIT_GRACE.as_secs()
        ),
        None => return None,
    };
    Some(InstanceError::UserSpaceUnsupported { detail })
}

/// Waits for the guest's connection, or the VMM's end, or the deadline. With `watch_init`
/// (a Linux guest on a kvm_pvm host), fails as soon as the kernel has started /init and init
/// has faulted.
pub(super) fn wait_for_guest(
    jail: &mut Jail,
    listener: &UnixListener,
    deadline: Instant,
    timeout: Duration,
    watch_init: bool,
) -> Result<UnixStream, InstanceError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let detail = jail
                .logs()
                .last_word()
                .unwrap_or_else(|| "the guest never connected to the vsock port".into());
            return Err(InstanceError::StartTimeout {
                after: timeout,
                detail,
            });
        }
        if watch_init {
            if let Some(e) = user_space_failure(jail.logs(), false) {
                return Err(e);
            }
        }
        let slice = if watch_init {
            left.min(Duration::from_millis(200))
        } else {
            left
        };
        let mut fds = vec![listener.as_fd()];
        fds.extend(jail.supervisor_fd());
        let ready = sys::poll_readable(&fds, slice).map_err(InstanceError::Watch)?;
        if ready.first() == Some(&true) {
            match listener.accept() {
                Ok((s, _)) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(InstanceError::HostDir {
                        path: jail.host_dir().to_path_buf(),
                        source: e,
                    })
                }
            }
        }
        if ready.get(1) == Some(&true) {
            // Let the drain threads take the last words.
            std::thread::sleep(Duration::from_millis(20));
            if watch_init {
                if let Some(e) = user_space_failure(jail.logs(), true) {
                    return Err(e);
                }
            }
            return Err(InstanceError::Exited(jail.exit_message()));
        }
    }
}

/// Reads frames (skipping `Log`s) until the guest's `Hello`, which must name `function`.
/// Returns when it arrived.
pub(super) fn hello(
    channel: &mut Channel,
    jail: &mut Jail,
    function: &Function,
    deadline: Instant,
    timeout: Duration,
) -> Result<Instant, InstanceError> {
    let hello = loop {
        let frame = channel.read_frame(deadline).map_err(|e| match e {
            ChannelError::Timeout => InstanceError::StartTimeout {
                after: timeout,
                detail: "the guest connected but sent no Hello".into(),
            },
            ChannelError::Closed => InstanceError::Exited(jail.exit_message()),
            other => InstanceError::Hello(other.to_string()),
        })?;
        match frame.header.kind {
            Kind::Log => continue,
            Kind::Hello => break frame.payload,
            other => {
                return Err(InstanceError::Hello(format!(
                    "the guest's first frame is {other:?}, not Hello"
                )))
            }
        }
    };
    let hello_at = Instant::now();
    if hello != function.name.as_bytes() {
        return Err(InstanceError::Hello(format!(
            "the guest says it runs {:?}, not {:?}",
            String::from_utf8_lossy(&hello),
            function.name
        )));
    }
    Ok(hello_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console watch finds `Run /init` and the fault after it, even split between reads.
    #[test]
    fn console_watch_sees_init_start_and_fault() {
        let logs = OutputLogs::default();
        let feed = |text: &str| logs.push_console(text.as_bytes());
        feed("[ 1.0] init[1]: segfault at 0 before init started\n");
        assert!(
            user_space_failure(&logs, true).is_none(),
            "no Run /init yet"
        );
        feed("[ 50.1] Run /in");
        feed("it as init process\n");
        assert!(logs.init_started().is_some());
        assert!(user_space_failure(&logs, false).is_none(), "no fault yet");
        feed(&"x".repeat(5000));
        feed("\n[ 55.9] init[1]: segfault at ffffffff81400040");
        assert!(user_space_failure(&logs, false).is_none(), "half a line");
        feed(" ip ffffffff81400040\n");
        match user_space_failure(&logs, false) {
            Some(InstanceError::UserSpaceUnsupported { detail }) => {
                assert!(
                    detail.ends_with("init faulted: [ 55.9] init[1]: segfault at ffffffff81400040 ip ffffffff81400040"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
        let ended = OutputLogs::default();
        ended.push_console(b"Run /init as init process\n");
        assert!(matches!(
            user_space_failure(&ended, true),
            Some(InstanceError::UserSpaceUnsupported { .. })
        ));
    }
}
