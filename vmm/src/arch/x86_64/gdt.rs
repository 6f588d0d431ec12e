//! The boot GDT: flat segments for the kernel's entry, and the `kvm_segment`s loaded into
//! the segment registers from them.
//!
//! Selectors follow the Linux boot protocol (`__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18); the
//! PVH entry accepts any selectors, so both entries use the same table positions.

use kvm_bindings::kvm_segment;

/// Index of the code descriptor (selector 0x10).
pub const CODE_INDEX: u16 = 2;
/// Index of the data descriptor (selector 0x18).
pub const DATA_INDEX: u16 = 3;
/// Index of the TSS descriptor (selector 0x20).
pub const TSS_INDEX: u16 = 4;
/// Descriptors in the boot GDT.
pub const GDT_ENTRIES: usize = 5;

/// Access byte + flags nibble of a descriptor, written as `0xF0AA`: `F` = G, D/B, L, AVL
/// (bits 15..12), `AA` = the access byte (P, DPL, S, type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub flags: u16,
    pub base: u32,
    /// 20-bit limit, in 4 KiB units when G is set.
    pub limit: u32,
}

/// 64-bit code, present, DPL 0, execute/read, accessed; 4 KiB granularity.
pub const CODE64: Descriptor = Descriptor {
    flags: 0xa09b,
    base: 0,
    limit: 0xfffff,
};
/// 32-bit code, flat 4 GiB, execute/read, accessed.
pub const CODE32: Descriptor = Descriptor {
    flags: 0xc09b,
    base: 0,
    limit: 0xfffff,
};
/// 32-bit data, flat 4 GiB, read/write, accessed (also used in long mode).
pub const DATA: Descriptor = Descriptor {
    flags: 0xc093,
    base: 0,
    limit: 0xfffff,
};
/// Busy TSS, base 0, 104 bytes (the PVH ABI's TR).
pub const TSS32: Descriptor = Descriptor {
    flags: 0x008b,
    base: 0,
    limit: 0x67,
};
/// Busy TSS for long mode (never used by the guest before it loads its own).
pub const TSS64: Descriptor = Descriptor {
    flags: 0x808b,
    base: 0,
    limit: 0xfffff,
};

impl Descriptor {
    /// The 8-byte GDT entry.
    pub fn encode(self) -> u64 {
        let base = u64::from(self.base);
        let limit = u64::from(self.limit);
        let flags = u64::from(self.flags);
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | ((flags & 0xff) << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((flags >> 12) & 0xf) << 52)
            | (((base >> 24) & 0xff) << 56)
    }

    fn granular(self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// The segment register value that loading this descriptor (at `index`) produces.
    pub fn segment(self, index: u16) -> kvm_segment {
        let present = u8::from(self.flags & 0x80 != 0);
        kvm_segment {
            base: u64::from(self.base),
            limit: if self.granular() {
                (self.limit << 12) | 0xfff
            } else {
                self.limit
            },
            selector: index * 8,
            type_: (self.flags & 0xf) as u8,
            present,
            dpl: ((self.flags >> 5) & 0x3) as u8,
            db: u8::from(self.flags & 0x4000 != 0),
            s: u8::from(self.flags & 0x10 != 0),
            l: u8::from(self.flags & 0x2000 != 0),
            g: u8::from(self.granular()),
            avl: u8::from(self.flags & 0x1000 != 0),
            unusable: u8::from(present == 0),
            padding: 0,
        }
    }
}

/// The boot GDT for a code descriptor and a TSS descriptor, at the fixed indices above.
pub fn boot_gdt(code: Descriptor, tss: Descriptor) -> [u64; GDT_ENTRIES] {
    let mut gdt = [0u64; GDT_ENTRIES];
    gdt[usize::from(CODE_INDEX)] = code.encode();
    gdt[usize::from(DATA_INDEX)] = DATA.encode();
    gdt[usize::from(TSS_INDEX)] = tss.encode();
    gdt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_architectural_layout() {
        assert_eq!(CODE64.encode(), 0x00af_9b00_0000_ffff);
        assert_eq!(CODE32.encode(), 0x00cf_9b00_0000_ffff);
        assert_eq!(DATA.encode(), 0x00cf_9300_0000_ffff);
        assert_eq!(TSS32.encode(), 0x0000_8b00_0000_0067);
        let d = Descriptor {
            flags: 0x4093,
            base: 0x1234_5678,
            limit: 0xabcde,
        };
        assert_eq!(d.encode(), 0x124a_9334_5678_bcde);
    }

    #[test]
    fn segments_decode_the_descriptor() {
        let cs = CODE64.segment(CODE_INDEX);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.g, cs.type_, cs.s, cs.present),
            (0x10, 1, 0, 1, 0xb, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = DATA.segment(DATA_INDEX);
        assert_eq!((ds.selector, ds.db, ds.type_, ds.unusable), (0x18, 1, 3, 0));
        let tr = TSS32.segment(TSS_INDEX);
        assert_eq!(
            (tr.selector, tr.limit, tr.g, tr.s, tr.type_),
            (0x20, 0x67, 0, 0, 0xb)
        );
    }

    #[test]
    fn gdt_starts_with_null_descriptors() {
        let gdt = boot_gdt(CODE64, TSS64);
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[1], 0);
        assert_eq!(gdt[2], CODE64.encode());
    }
}
