//! The balloon's requests, as Firecracker decides them: `PUT /balloon` before
//! `InstanceStart` only; `PATCH /balloon`, `GET` and `PATCH /balloon/statistics` and the
//! hinting commands (`/balloon/hinting/{start,status,stop}`) on the running microVM only; `GET /balloon` in both, answering the configuration as it is now
//! (a `PATCH` changes the target and the interval in the resources too, so that
//! `GET /vm/config` and a snapshot have them).

use super::{to_json, Controller, ControllerError, Microvm, Reply};
use crate::api::{ApiRequest, VmmData};
use crate::devices::virtio::balloon::{Balloon, BalloonError};
use crate::sync::lock;
use std::sync::{Arc, Mutex};

/// Why a balloon request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BalloonRequestError {
    #[error("no balloon device is configured (PUT /balloon before InstanceStart)")]
    NoDevice,
    #[error("balloon: {0}")]
    Device(#[from] BalloonError),
    #[error("{0} is not a balloon request")]
    NotBalloon(&'static str),
}

impl Controller {
    /// One of the balloon's requests (any other request is refused as unknown here).
    pub(super) fn apply_balloon(&mut self, req: ApiRequest, vm: Option<&mut dyn Microvm>) -> Reply {
        let what = req.describe();
        match req {
            ApiRequest::GetBalloon => to_json(
                self.resources
                    .balloon
                    .as_ref()
                    .ok_or(BalloonRequestError::NoDevice)?,
            ),
            ApiRequest::PutBalloon(cfg) => {
                self.pre_boot(what)?;
                self.resources.set_balloon(cfg)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::PatchBalloon(upd) => {
                let dev = self.running_balloon(what, vm)?;
                lock(&dev)
                    .update_size(upd.amount_mib)
                    .map_err(BalloonRequestError::from)?;
                if let Some(b) = self.resources.balloon.as_mut() {
                    b.amount_mib = upd.amount_mib;
                }
                Ok(VmmData::Empty)
            }
            ApiRequest::GetBalloonStats => {
                let dev = self.running_balloon(what, vm)?;
                let stats = lock(&dev)
                    .latest_stats()
                    .map_err(BalloonRequestError::from)?;
                to_json(&stats)
            }
            ApiRequest::PatchBalloonStats(upd) => {
                let dev = self.running_balloon(what, vm)?;
                lock(&dev)
                    .update_stats_interval(upd.stats_polling_interval_s)
                    .map_err(BalloonRequestError::from)?;
                if let Some(b) = self.resources.balloon.as_mut() {
                    b.stats_polling_interval_s = upd.stats_polling_interval_s;
                }
                Ok(VmmData::Empty)
            }
            ApiRequest::StartBalloonHinting(cmd) => {
                let dev = self.running_balloon(what, vm)?;
                lock(&dev)
                    .start_hinting(cmd.acknowledge_on_stop)
                    .map_err(BalloonRequestError::from)?;
                Ok(VmmData::Empty)
            }
            ApiRequest::GetBalloonHintingStatus => {
                let dev = self.running_balloon(what, vm)?;
                let status = lock(&dev)
                    .hinting_status()
                    .map_err(BalloonRequestError::from)?;
                to_json(&status)
            }
            ApiRequest::StopBalloonHinting => {
                let dev = self.running_balloon(what, vm)?;
                lock(&dev)
                    .stop_hinting()
                    .map_err(BalloonRequestError::from)?;
                Ok(VmmData::Empty)
            }
            // `Controller::apply` sends only the balloon's requests here.
            other => Err(BalloonRequestError::NotBalloon(other.describe()).into()),
        }
    }

    /// The running microVM's balloon device.
    fn running_balloon(
        &self,
        what: &'static str,
        vm: Option<&mut dyn Microvm>,
    ) -> Result<Arc<Mutex<Balloon>>, ControllerError> {
        let dev = self.running(what, vm)?.balloon();
        Ok(dev.ok_or(BalloonRequestError::NoDevice)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RequestError;
    use crate::controller::stand_in::StandInVm;
    use crate::controller::Outcome;
    use crate::devices::virtio::balloon::BalloonParams;
    use crate::devices::virtio::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
    use crate::resources::{
        BalloonConfig, BalloonStatsUpdate, BalloonUpdate, BootSourceConfig, VmResources,
    };
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    /// A running microVM whose only part is a started balloon over 8 MiB of memory.
    struct BalloonVm(StandInVm, Arc<Interrupt>);

    impl BalloonVm {
        fn new(cfg: &BalloonConfig) -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
            let mut dev = Balloon::new(BalloonParams {
                amount_mib: cfg.amount_mib,
                deflate_on_oom: cfg.deflate_on_oom,
                stats_polling_interval_s: cfg.stats_polling_interval_s,
                free_page_hinting: cfg.free_page_hinting,
                free_page_reporting: cfg.free_page_reporting,
            })
            .unwrap();
            let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
            let queues = (0..dev.queue_max_sizes().len())
                .map(|_| {
                    let mut q = Queue::new(16).unwrap();
                    q.set_ready(true);
                    q
                })
                .collect();
            dev.activate(Activation {
                mem,
                queues,
                features: VIRTIO_F_VERSION_1,
                interrupt: irq.clone(),
            })
            .unwrap();
            let vm = StandInVm {
                balloon: Some(Arc::new(Mutex::new(dev))),
                ..StandInVm::default()
            };
            BalloonVm(vm, irq)
        }
    }

    fn reply(c: &mut Controller, req: ApiRequest, vm: Option<&mut BalloonVm>) -> Reply {
        match c.handle(req, vm.map(|v| &mut v.0 as &mut dyn Microvm)) {
            Outcome::Reply(r) => r,
            _ => panic!("not a plain request"),
        }
    }

    fn refused(r: Reply) -> String {
        match r.map_err(RequestError::from) {
            Err(RequestError::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn json(r: Reply) -> serde_json::Value {
        match r {
            Ok(VmmData::Json(s)) => serde_json::from_str(&s).unwrap(),
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    #[test]
    fn balloon_requests_follow_firecracker_pre_and_post_boot() {
        let mut c = Controller::new("b", VmResources::default());
        assert_eq!(
            refused(reply(&mut c, ApiRequest::GetBalloon, None)),
            "no balloon device is configured (PUT /balloon before InstanceStart)"
        );
        for req in [
            ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 1 }),
            ApiRequest::GetBalloonStats,
            ApiRequest::PatchBalloonStats(BalloonStatsUpdate {
                stats_polling_interval_s: 1,
            }),
        ] {
            let what = req.describe();
            let m = refused(reply(&mut c, req, None));
            assert!(
                m.starts_with(what) && m.contains("only possible after InstanceStart"),
                "{m}"
            );
        }
        let too_big = BalloonConfig {
            amount_mib: 129,
            ..BalloonConfig::default()
        };
        assert!(
            refused(reply(&mut c, ApiRequest::PutBalloon(too_big), None))
                .contains("mem_size_mib 128")
        );
        let cfg = BalloonConfig {
            amount_mib: 2,
            deflate_on_oom: true,
            stats_polling_interval_s: 5,
            ..BalloonConfig::default()
        };
        reply(&mut c, ApiRequest::PutBalloon(cfg), None).unwrap();
        let got = json(reply(&mut c, ApiRequest::GetBalloon, None));
        assert_eq!(
            got,
            serde_json::json!({"amount_mib": 2, "deflate_on_oom": true,
                "stats_polling_interval_s": 5, "free_page_hinting": false,
                "free_page_reporting": false})
        );
        // Started (as a config file would): runtime requests reach the device.
        c.resources.boot_source = Some(BootSourceConfig::default());
        c.started = true;
        let mut vm = BalloonVm::new(&cfg);
        let m = refused(reply(&mut c, ApiRequest::PutBalloon(cfg), Some(&mut vm)));
        assert!(m.contains("only possible before InstanceStart"), "{m}");
        reply(
            &mut c,
            ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 4 }),
            Some(&mut vm),
        )
        .unwrap();
        assert_eq!(vm.1.generation(), 1, "the driver is told");
        let m = refused(reply(
            &mut c,
            ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 9 }),
            Some(&mut vm),
        ));
        assert_eq!(
            m,
            "balloon: amount_mib 9 is more than the guest's memory (8 MiB)"
        );
        let s = json(reply(&mut c, ApiRequest::GetBalloonStats, Some(&mut vm)));
        assert_eq!(
            s,
            serde_json::json!({"target_pages": 1024, "actual_pages": 0,
                "target_mib": 4, "actual_mib": 0})
        );
        reply(
            &mut c,
            ApiRequest::PatchBalloonStats(BalloonStatsUpdate {
                stats_polling_interval_s: 1,
            }),
            Some(&mut vm),
        )
        .unwrap();
        let m = refused(reply(
            &mut c,
            ApiRequest::PatchBalloonStats(BalloonStatsUpdate {
                stats_polling_interval_s: 0,
            }),
            Some(&mut vm),
        ));
        assert!(m.contains("cannot be turned on or off"), "{m}");
        let got = json(reply(&mut c, ApiRequest::GetBalloon, Some(&mut vm)));
        assert_eq!(
            (
                got["amount_mib"].clone(),
                got["stats_polling_interval_s"].clone()
            ),
            (4.into(), 1.into())
        );
        let cfg = json(reply(&mut c, ApiRequest::GetVmConfig, Some(&mut vm)));
        assert_eq!(cfg["balloon"]["amount_mib"], 4);
    }

    #[test]
    fn hinting_requests_follow_firecracker() {
        use crate::resources::HintingStart;
        let start = |ack| {
            ApiRequest::StartBalloonHinting(HintingStart {
                acknowledge_on_stop: ack,
            })
        };
        let mut c = Controller::new("b", VmResources::default());
        for req in [
            start(true),
            ApiRequest::GetBalloonHintingStatus,
            ApiRequest::StopBalloonHinting,
        ] {
            let what = req.describe();
            let m = refused(reply(&mut c, req, None));
            assert!(
                m.starts_with(what) && m.contains("only possible after InstanceStart"),
                "{m}"
            );
        }
        // Started without a balloon.
        c.resources.boot_source = Some(BootSourceConfig::default());
        c.started = true;
        let mut none = BalloonVm(
            StandInVm::default(),
            BalloonVm::new(&BalloonConfig::default()).1,
        );
        let m = refused(reply(&mut c, start(true), Some(&mut none)));
        assert_eq!(
            m,
            "no balloon device is configured (PUT /balloon before InstanceStart)"
        );
        // A balloon without hinting.
        let mut plain = BalloonVm::new(&BalloonConfig::default());
        for req in [
            start(true),
            ApiRequest::GetBalloonHintingStatus,
            ApiRequest::StopBalloonHinting,
        ] {
            assert_eq!(
                refused(reply(&mut c, req, Some(&mut plain))),
                "balloon: free page hinting is disabled (free_page_hinting was false when the device was configured)"
            );
        }
        // With hinting: runs 2 and 3, stopped with DONE (1); the guest sent nothing yet.
        let cfg = BalloonConfig {
            free_page_hinting: true,
            ..BalloonConfig::default()
        };
        let mut vm = BalloonVm::new(&cfg);
        let status = |c: &mut Controller, vm: &mut BalloonVm| {
            json(reply(c, ApiRequest::GetBalloonHintingStatus, Some(vm)))
        };
        assert_eq!(
            status(&mut c, &mut vm),
            serde_json::json!({"host_cmd": 0, "guest_cmd": null})
        );
        assert!(matches!(
            reply(&mut c, start(true), Some(&mut vm)),
            Ok(VmmData::Empty)
        ));
        assert_eq!(vm.1.generation(), 1, "the driver is told");
        assert_eq!(status(&mut c, &mut vm)["host_cmd"], 2);
        reply(&mut c, start(false), Some(&mut vm)).unwrap();
        assert_eq!(status(&mut c, &mut vm)["host_cmd"], 3);
        assert!(matches!(
            reply(&mut c, ApiRequest::StopBalloonHinting, Some(&mut vm)),
            Ok(VmmData::Empty)
        ));
        assert_eq!(
            status(&mut c, &mut vm),
            serde_json::json!({"host_cmd": 1, "guest_cmd": null})
        );
    }

    #[test]
    fn statistics_disabled_are_refused_by_name() {
        let mut c = Controller::new("b", VmResources::default());
        let cfg = BalloonConfig::default();
        reply(&mut c, ApiRequest::PutBalloon(cfg), None).unwrap();
        c.started = true;
        let mut vm = BalloonVm::new(&cfg);
        let m = refused(reply(&mut c, ApiRequest::GetBalloonStats, Some(&mut vm)));
        assert_eq!(
            m,
            "balloon: statistics are disabled (stats_polling_interval_s was 0 when the device was configured)"
        );
    }
}
