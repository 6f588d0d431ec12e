//! The instance's uid (= gid): the first free one in `[uid_base, uid_base + uid_count)`,
//! held by an `flock` on `<state>/uids/<uid>.lock` for the instance's life, so that two
//! workers sharing a state directory never hand out the same uid.

use super::config::InstanceConfig;
use super::error::InstanceError;
use crate::sys::FileLock;

/// Leases a uid, trying from the `n`th of the range on; the lock releases it when dropped.
pub(super) fn lease(cfg: &InstanceConfig, n: u64) -> Result<(u32, FileLock), InstanceError> {
    let dir = cfg.state_dir.join("uids");
    std::fs::create_dir_all(&dir).map_err(|source| InstanceError::HostDir {
        path: dir.clone(),
        source,
    })?;
    let count = cfg.uid_count.max(1);
    let first = u32::try_from(n % u64::from(count)).unwrap_or(0);
    for i in 0..count {
        let uid = cfg.uid_base.saturating_add((first + i) % count);
        let path = dir.join(format!("{uid}.lock"));
        match FileLock::acquire(&path, false) {
            Ok(Some(l)) => return Ok((uid, l)),
            Ok(None) => continue,
            Err(source) => return Err(InstanceError::UidLock { uid, source }),
        }
    }
    Err(InstanceError::NoFreeUid {
        base: cfg.uid_base,
        end: cfg.uid_base.saturating_add(count),
    })
}
