//! Taps: a persistent tap owned by the jail's uid:gid, so that the VMM attaches to it
//! (TUNSETIFF) without any capability; its removal; bringing an interface up.
//!
//! Raw calls: the `/dev/net/tun` ioctls (TUNSETIFF, TUNSETOWNER, TUNSETGROUP,
//! TUNSETPERSIST), SIOCGIFFLAGS/SIOCSIFFLAGS and the `socket` they are made on (nix has no
//! wrapper for these ioctls, and its socket wrapper would add a feature for this one call).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetworkError;
use crate::sys::cvt;

/// `SIOCGIFFLAGS` and `SIOCSIFFLAGS`, typed as the C library's `ioctl` takes its request
/// (`unsigned long` in glibc, `int` in musl).
const SIOCGIFFLAGS: libc::Ioctl = 0x8913;
const SIOCSIFFLAGS: libc::Ioctl = 0x8914;
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name and a union of integers and pointers); all-zero is
    // a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// `ifr_flags` is a C `short` holding a bit pattern (IFF_TUN_EXCL is bit 15): keeping the
/// low 16 bits is exactly what C does with these `int` constants.
#[allow(clippy::cast_possible_truncation)]
fn ifr_flags(flags: libc::c_int) -> libc::c_short {
    flags as libc::c_short
}

fn open_tun(name: &str) -> Result<File, NetworkError> {
    File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|source| NetworkError::Tap {
            name: name.to_owned(),
            op: "open /dev/net/tun",
            source,
        })
}

/// An ioctl's return value; the error names the tap and the operation.
fn checked(ret: libc::c_int, name: &str, op: &'static str) -> Result<(), NetworkError> {
    cvt(ret).map(drop).map_err(|source| NetworkError::Tap {
        name: name.to_owned(),
        op,
        source,
    })
}

/// Attaches `tun` to the tap `name` with `flags` (TUNSETIFF).
fn attach(
    tun: &File,
    name: &str,
    op: &'static str,
    flags: libc::c_int,
) -> Result<(), NetworkError> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = ifr_flags(flags);
    // SAFETY: TUNSETIFF reads and writes the ifreq, which lives for the call.
    checked(
        unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) },
        name,
        op,
    )
}

fn tun_ioctl(
    tun: &File,
    name: &str,
    op: &'static str,
    request: libc::Ioctl,
    arg: libc::c_ulong,
) -> Result<(), NetworkError> {
    // SAFETY: the TUNSET* requests used here take an integer argument by value.
    checked(
        unsafe { libc::ioctl(tun.as_raw_fd(), request, arg) },
        name,
        op,
    )
}

/// A persistent tap owned by uid:gid, brought up. `record` journals it between creation and
/// persistence: if that fails, closing the descriptor removes the still non-persistent
/// interface.
pub fn create(
    name: &str,
    uid: u32,
    gid: u32,
    record: impl FnOnce() -> Result<(), NetworkError>,
) -> Result<(), NetworkError> {
    let tun = open_tun(name)?;
    // IFF_TUN_EXCL: fail rather than take over an interface that already exists.
    attach(
        &tun,
        name,
        "create (TUNSETIFF)",
        TAP_FLAGS | libc::IFF_TUN_EXCL,
    )?;
    tun_ioctl(
        &tun,
        name,
        "set owner",
        libc::TUNSETOWNER,
        libc::c_ulong::from(uid),
    )?;
    tun_ioctl(
        &tun,
        name,
        "set group",
        libc::TUNSETGROUP,
        libc::c_ulong::from(gid),
    )?;
    record()?;
    tun_ioctl(&tun, name, "make persistent", libc::TUNSETPERSIST, 1)?;
    drop(tun);
    link_up(name)
}

/// Removes a tap made by [`create`].
pub fn delete(name: &str) -> Result<(), NetworkError> {
    let tun = open_tun(name)?;
    attach(&tun, name, "attach for removal (TUNSETIFF)", TAP_FLAGS)?;
    // Not persistent any more: the interface goes away when `tun` is closed.
    tun_ioctl(&tun, name, "clear persistence", libc::TUNSETPERSIST, 0)
}

/// Brings the interface `name` up (in the calling thread's network namespace).
pub fn link_up(name: &str) -> Result<(), NetworkError> {
    let err = |source| NetworkError::LinkUp {
        name: name.to_owned(),
        source,
    };
    // SAFETY: socket takes integer arguments; the descriptor is owned right away.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        .map_err(err)?;
    // SAFETY: `fd` was just returned by socket and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq, which lives for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req) }).map_err(err)?;
    // SAFETY: SIOCGIFFLAGS initialised the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | ifr_flags(libc::IFF_UP);
    // SAFETY: SIOCSIFFLAGS reads the ifreq, which lives for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS, &req) }).map_err(err)?;
    Ok(())
}
