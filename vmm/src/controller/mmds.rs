//! The MMDS requests: the data store (`GET`/`PUT`/`PATCH /mmds`, at any time, as in
//! Firecracker) and `PUT /mmds/config` (before boot; it also gives the store its version
//! and output form).

use super::{to_json, Controller, Reply};
use crate::api::VmmData;
use crate::mmds::SharedMmds;
use crate::resources::MmdsConfig;
use crate::sync::lock;

impl Controller {
    /// The MMDS data store the API writes (by default an empty one of the default size).
    pub fn set_mmds(&mut self, mmds: SharedMmds) {
        self.mmds = mmds;
        self.configure_mmds();
    }

    pub fn mmds(&self) -> &SharedMmds {
        &self.mmds
    }

    /// `GET /mmds`.
    pub(super) fn get_mmds(&self) -> Reply {
        let store = lock(&self.mmds);
        match store.document() {
            // Nothing put yet: an empty document, as Firecracker answers.
            serde_json::Value::Null => Ok(VmmData::Json("{}".into())),
            doc => to_json(doc),
        }
    }

    /// `PUT /mmds`.
    pub(super) fn put_mmds(&mut self, doc: serde_json::Value) -> Reply {
        lock(&self.mmds).put(doc)?;
        Ok(VmmData::Empty)
    }

    /// `PATCH /mmds`.
    pub(super) fn patch_mmds(&mut self, patch: &serde_json::Value) -> Reply {
        lock(&self.mmds).patch(patch)?;
        Ok(VmmData::Empty)
    }

    /// `PUT /mmds/config`, before boot only.
    pub(super) fn set_mmds_config(&mut self, what: &'static str, cfg: MmdsConfig) -> Reply {
        self.pre_boot(what)?;
        self.resources.set_mmds_config(cfg)?;
        self.configure_mmds();
        Ok(VmmData::Empty)
    }

    /// Gives the store the MMDS version and output form of the resources' `mmds-config`.
    pub(super) fn configure_mmds(&self) {
        if let Some(cfg) = &self.resources.mmds_config {
            lock(&self.mmds).configure(cfg.version, cfg.imds_compat);
        }
    }
}
