use super::persist::TransportStateError;
use super::*;
use crate::devices::rate_limiter::persist::LimiterStateError;
use crate::devices::rate_limiter::RateLimiter;
use crate::devices::virtio::{ActivateError, EventCtx};
use crate::resources::{RateLimiterConfig, TokenBucketConfig};
use crate::snapshot::{Decoder, Encoder};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// A device that records what the transport did to it.
#[derive(Default)]
struct Fake {
    activated: Option<(u64, Vec<(bool, u16)>)>,
    resets: u32,
    refuse: bool,
    config: [u8; 8],
    limiter: Option<RateLimiter>,
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        42
    }
    fn id(&self) -> &str {
        "fake"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << 5
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) -> bool {
        if offset == 0 && data.len() == 1 {
            self.config[0] = data[0];
            return true;
        }
        false
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.refuse {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.activated = Some((
            a.features,
            a.queues.iter().map(|q| (q.ready(), q.size())).collect(),
        ));
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = None;
        self.resets += 1;
    }
    fn is_activated(&self) -> bool {
        self.activated.is_some()
    }
    fn process_queue(&mut self, _: usize, _: &mut EventCtx) {}
    fn rate_limiters_mut(&mut self) -> Vec<&mut RateLimiter> {
        self.limiter.iter_mut().collect()
    }
}

fn transport(fake: Fake) -> (MmioTransport, Arc<Mutex<Fake>>, Vec<EventFd>) {
    let dev = Arc::new(Mutex::new(fake));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let evts: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let clones = evts.iter().map(|e| e.try_clone().unwrap()).collect();
    (MmioTransport::new(dev.clone(), mem, irq, evts), dev, clones)
}

fn r(t: &mut MmioTransport, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u32, v: u32) {
    t.write(u64::from(off), &v.to_le_bytes());
}

/// Drives the device to FEATURES_OK with `features`.
fn negotiate(t: &mut MmioTransport, features: u64) {
    w(t, reg::VIRTIO_MMIO_STATUS, ACK);
    w(t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER);
    w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    w(t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
}

fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
    w(t, reg::VIRTIO_MMIO_QUEUE_SEL, index);
    w(t, reg::VIRTIO_MMIO_QUEUE_NUM, size);
    w(t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, base as u32);
    w(t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
    w(t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, (base + 0x2000) as u32);
    w(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
}

#[test]
fn identity_registers() {
    let (mut t, _, _) = transport(Fake::default());
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_VERSION), 2);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), 42);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 1 << 5);
    w(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 1);
    w(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 0);
    w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(
        r(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX),
        0,
        "a queue that does not exist"
    );
}

#[test]
fn full_initialisation_activates_the_device() {
    let (mut t, dev, evts) = transport(Fake::default());
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5);
    assert_eq!(
        r(&mut t, reg::VIRTIO_MMIO_STATUS),
        ACK | DRIVER | FEATURES_OK
    );
    setup_queue(&mut t, 0, 8, 0x10000);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 1);
    w(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(
        r(&mut t, reg::VIRTIO_MMIO_STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK
    );
    let (features, queues) = lock(&dev).activated.clone().unwrap();
    assert_eq!(features, VIRTIO_F_VERSION_1 | 1 << 5);
    assert_eq!(queues, vec![(true, 8), (false, 8)]);
    // Every queue gets a turn on the VMM thread after activation.
    assert_eq!(evts[0].read().unwrap(), 1);
    assert_eq!(evts[1].read().unwrap(), 1);
    // Notifications that miss the ioeventfd are forwarded; bad indices are not.
    w(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(evts[1].read().unwrap(), 1);
    w(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 9);
    assert!(evts[0].read().is_err() && evts[1].read().is_err());
    // Queue registers are frozen after DRIVER_OK.
    w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
    w(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn reset_frees_the_device_state() {
    let (mut t, dev, _) = transport(Fake::default());
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 8, 0x10000);
    w(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(lock(&dev).is_activated());
    w(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
    assert!(!lock(&dev).is_activated());
    assert_eq!(lock(&dev).resets, 1);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
    // And it can be brought up again.
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 4, 0x20000);
    w(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(lock(&dev).activated.clone().unwrap().1[0], (true, 4));
}

#[test]
fn features_must_be_offered_and_modern() {
    let (mut t, _, _) = transport(Fake::default());
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 6);
    assert_eq!(
        r(&mut t, reg::VIRTIO_MMIO_STATUS),
        ACK | DRIVER,
        "an unoffered bit"
    );
    w(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
    negotiate(&mut t, 1 << 5);
    assert_eq!(
        r(&mut t, reg::VIRTIO_MMIO_STATUS),
        ACK | DRIVER,
        "no VERSION_1"
    );
}

#[test]
fn status_steps_cannot_be_skipped() {
    let (mut t, dev, _) = transport(Fake::default());
    w(&mut t, reg::VIRTIO_MMIO_STATUS, DRIVER_OK);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
    w(&mut t, reg::VIRTIO_MMIO_STATUS, ACK);
    w(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    // Taken in order: FEATURES_OK fails (no features written: no VERSION_1) so DRIVER_OK
    // is never reached.
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS), ACK | DRIVER);
    assert!(!lock(&dev).is_activated());
    w(&mut t, reg::VIRTIO_MMIO_STATUS, ACK);
    assert_eq!(
        r(&mut t, reg::VIRTIO_MMIO_STATUS),
        ACK | DRIVER,
        "bits cannot be cleared"
    );
    w(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER | FAILED);
    w(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FAILED | FEATURES_OK,
    );
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS), ACK | DRIVER | FAILED);
    w(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn bad_queues_need_a_reset() {
    for (size, base) in [
        (32, 0x10000),
        (3, 0x10000),
        (0, 0x10000),
        (70000, 0x10000),
        (8, 0x10008),
        (8, 0xff000),
        (8, 0xffff_0000),
    ] {
        let (mut t, dev, _) = transport(Fake::default());
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, size, base);
        w(
            &mut t,
            reg::VIRTIO_MMIO_STATUS,
            ACK | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(!lock(&dev).is_activated(), "size {size} at {base:#x}");
        assert_eq!(
            r(&mut t, reg::VIRTIO_MMIO_STATUS) & NEEDS_RESET,
            NEEDS_RESET
        );
        assert_eq!(
            r(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
            VIRTIO_MMIO_INT_CONFIG
        );
        w(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
    }
    let (mut t, dev, _) = transport(Fake {
        refuse: true,
        ..Fake::default()
    });
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(!lock(&dev).is_activated());
    assert_eq!(
        r(&mut t, reg::VIRTIO_MMIO_STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET
    );
    // Only a reset is accepted now.
    w(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK | FAILED,
    );
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS) & FAILED, FAILED);
}

#[test]
fn junk_accesses_are_ignored() {
    let (mut t, dev, _) = transport(Fake::default());
    let before = METRICS.virtio.invalid_mmio_accesses.total();
    // Wrong widths and alignment on registers.
    let mut b2 = [0xaau8; 2];
    t.read(0, &mut b2);
    assert_eq!(b2, [0, 0]);
    t.write(u64::from(reg::VIRTIO_MMIO_STATUS), &[1]);
    t.write(u64::from(reg::VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
    let mut b3 = [0u8; 3];
    t.read(0x100, &mut b3);
    // Read-only and undefined registers.
    w(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE, 0);
    w(&mut t, 0x0c8, 1);
    w(&mut t, 0x0fc, 1);
    assert_eq!(r(&mut t, 0x0c8), 0);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY), 0);
    // Queue registers before FEATURES_OK, for a queue that does not exist.
    w(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 4);
    w(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 77);
    w(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
    // Config space writes before DRIVER, and a refused one after.
    t.write(0x100, &[9]);
    w(&mut t, reg::VIRTIO_MMIO_STATUS, ACK);
    w(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER);
    t.write(0x100, &[9]);
    t.write(0x104, &[9]);
    assert_eq!(lock(&dev).config[0], 9);
    assert!(METRICS.virtio.invalid_mmio_accesses.total() >= before + 13);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_STATUS), ACK | DRIVER);
}

#[test]
fn interrupt_ack_and_generation() {
    let (mut t, _, _) = transport(Fake::default());
    t.interrupt.signal_used_queue(0);
    t.interrupt.signal_config_change();
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 1);
    w(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(r(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
}

/// A limiter of `ops` operations per hour, and of bytes when `bytes`.
fn hourly_limiter(ops: u64, bytes: bool) -> RateLimiter {
    let bucket = |size| TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time: 3_600_000,
    };
    RateLimiter::new(Some(&RateLimiterConfig {
        bandwidth: bytes.then(|| bucket(1 << 20)),
        ops: Some(bucket(ops)),
    }))
    .unwrap()
}

#[test]
fn snapshots_carry_the_rate_limiters_tokens() {
    let (t, dev, _) = transport(Fake {
        limiter: Some(hourly_limiter(3, true)),
        ..Fake::default()
    });
    // Two requests of 1000 bytes: one op of the hour's three is left.
    for _ in 0..2 {
        assert!(lock(&dev).limiter.as_mut().unwrap().consume(1000));
    }
    let saved = t.save_state().unwrap();
    assert_eq!(saved.limiters.len(), 1);
    let mut e = Encoder::new();
    e.put(&saved);
    let bytes = e.into_bytes();
    let decoded: persist::TransportState = Decoder::new(&bytes).get().unwrap();
    assert_eq!(decoded, saved);

    // A device built from the same configuration gets the saved tokens: one op left.
    let (mut t2, dev2, _) = transport(Fake {
        limiter: Some(hourly_limiter(3, true)),
        ..Fake::default()
    });
    t2.restore_state(&decoded).unwrap();
    let mut d = lock(&dev2);
    let l = d.limiter.as_mut().unwrap();
    assert!(l.consume(1000));
    assert!(!l.consume(1000), "the third op of the hour was the last");
    drop(d);

    // A device without the limiter, or with other buckets, is refused by name.
    let (mut none, _, _) = transport(Fake::default());
    assert_eq!(
        none.restore_state(&decoded).unwrap_err(),
        TransportStateError::LimiterCount {
            id: "fake".into(),
            saved: 1,
            here: 0
        }
    );
    let (mut ops_only, _, _) = transport(Fake {
        limiter: Some(hourly_limiter(3, false)),
        ..Fake::default()
    });
    let err = ops_only.restore_state(&decoded).unwrap_err();
    assert_eq!(
        err,
        TransportStateError::Limiter {
            id: "fake".into(),
            index: 0,
            source: LimiterStateError::UnexpectedBucket("bandwidth")
        }
    );
    assert!(
        err.to_string()
            .contains("virtio device fake: rate limiter 0"),
        "{err}"
    );
}

#[test]
fn a_v1_0_transport_state_has_no_device_state_and_v1_1_carries_it() {
    let (t, _dev, _) = transport(Fake::default());
    let mut saved = t.save_state().unwrap();
    assert!(saved.device_state.is_empty(), "the fake keeps none");
    // Format v1.0 ends after the rate limiters.
    let mut e = Encoder::new();
    e.put(&saved);
    let mut v1_0 = e.into_bytes();
    v1_0.truncate(v1_0.len() - 4);
    let mut d = Decoder::with_minor(&v1_0, 0);
    let decoded: persist::TransportState = d.get().unwrap();
    d.finish().unwrap();
    assert_eq!(decoded, saved);
    assert!(
        Decoder::with_minor(&v1_0, 1)
            .get::<persist::TransportState>()
            .is_err(),
        "v1.1 needs the device state"
    );
    saved.device_state = vec![7; 3];
    let mut e = Encoder::new();
    e.put(&saved);
    let decoded: persist::TransportState = Decoder::new(&e.into_bytes()).get().unwrap();
    assert_eq!(decoded.device_state, vec![7; 3]);
    // A device that keeps no state refuses some.
    let (mut t2, _, _) = transport(Fake::default());
    let e = t2.restore_state(&decoded).unwrap_err().to_string();
    assert!(e.contains("3 bytes of device state"), "{e}");
}
