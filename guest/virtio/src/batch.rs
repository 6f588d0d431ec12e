//! A batch of 32-bit register accesses, recorded first and performed later in one go.
//!
//! A driver's start-up is a fixed sequence of register writes with a few reads whose values
//! decide whether to go on (virtio 1.2, 3.1.1: `FEATURES_OK` and `DRIVER_OK` read back). A
//! guest whose every access from its own privilege level is expensive can hand the whole
//! sequence to a cheaper executor at once: the function runtime performs a batch in ring 0
//! (one trap from ring 3 instead of one exit per access from ring 3; see
//! guest/runtime/README.md). The batch only records; who performs it, and how, is the
//! guest's call ([`Batch::run`]).
//!
//! The executor's contract ([`batch_asm!`]'s `kiln_perform_regops`, which the runtime's
//! ring-0 handler calls, implements it in assembly): perform
//! the operations in order; [`OP_WRITE`] writes `value` to `addr`; [`OP_READ`] reads `addr`
//! into `value`; [`OP_CHECK`] reads `addr` into `value` and ends the batch after itself
//! unless `value & mask == expect`; [`OP_WAIT`] enables interrupts and halts until one has
//! been taken; any other kind ends the batch before itself. Return how many operations were
//! performed.

/// Write `value` to `addr`.
pub const OP_WRITE: u32 = 0;
/// Read `addr` into `value`.
pub const OP_READ: u32 = 1;
/// Read `addr` into `value`; stop unless `value & mask == expect`.
pub const OP_CHECK: u32 = 2;
/// Wait for an interrupt (no register access): a notification and a timer armed before it,
/// the timer disarmed after it, in one go.
pub const OP_WAIT: u32 = 3;

/// One 32-bit register access. The layout is the executor's interface (24 bytes: the
/// runtime's ring-0 handler reads the fields at offsets 0, 8, 12, 16 and 20).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegOp {
    /// Physical (= virtual) address of the register, 4-byte aligned.
    pub addr: u64,
    /// [`OP_WRITE`], [`OP_READ`], [`OP_CHECK`] or [`OP_WAIT`].
    pub kind: u32,
    /// The value written, or the value read once performed.
    pub value: u32,
    /// For [`OP_CHECK`]: the bits compared.
    pub mask: u32,
    /// For [`OP_CHECK`]: what those bits must be for the batch to go on.
    pub expect: u32,
}

// The executor reads the fields at these offsets.
const _: () = {
    assert!(core::mem::size_of::<RegOp>() == 24);
    assert!(core::mem::offset_of!(RegOp, addr) == 0);
    assert!(core::mem::offset_of!(RegOp, kind) == 8);
    assert!(core::mem::offset_of!(RegOp, value) == 12);
    assert!(core::mem::offset_of!(RegOp, mask) == 16);
    assert!(core::mem::offset_of!(RegOp, expect) == 20);
};

/// Where a read's value will be, once the batch has run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpIndex(usize);

/// Why a batch did not run to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// More operations were recorded than the batch holds: nothing was performed.
    Overflow,
    /// The check at this index failed (its value is the register read).
    Check(OpIndex, u32),
    /// The executor performed fewer operations than recorded without a failed check.
    Short(usize),
}

/// Up to `N` register accesses.
pub struct Batch<const N: usize> {
    ops: [RegOp; N],
    len: usize,
    overflow: bool,
    done: usize,
}

impl<const N: usize> Default for Batch<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Batch<N> {
    pub const fn new() -> Self {
        Batch {
            ops: [RegOp {
                addr: 0,
                kind: OP_WRITE,
                value: 0,
                mask: 0,
                expect: 0,
            }; N],
            len: 0,
            overflow: false,
            done: 0,
        }
    }

    fn push(&mut self, op: RegOp) -> OpIndex {
        let i = self.len;
        match self.ops.get_mut(i) {
            Some(slot) => {
                *slot = op;
                self.len += 1;
            }
            None => self.overflow = true,
        }
        OpIndex(i)
    }

    /// Records a write of `value` to the register at `addr`.
    pub fn write(&mut self, addr: u64, value: u32) {
        self.push(RegOp {
            addr,
            kind: OP_WRITE,
            value,
            ..RegOp::default()
        });
    }

    /// Records a read of the register at `addr`.
    pub fn read(&mut self, addr: u64) -> OpIndex {
        self.push(RegOp {
            addr,
            kind: OP_READ,
            ..RegOp::default()
        })
    }

    /// Records a read of the register at `addr` after which the batch stops unless
    /// `value & mask == expect`.
    pub fn check(&mut self, addr: u64, mask: u32, expect: u32) -> OpIndex {
        self.push(RegOp {
            addr,
            kind: OP_CHECK,
            value: 0,
            mask,
            expect,
        })
    }

    /// Records a wait for an interrupt.
    pub fn wait(&mut self) {
        self.push(RegOp {
            kind: OP_WAIT,
            ..RegOp::default()
        });
    }

    /// The operations recorded.
    pub fn ops(&self) -> &[RegOp] {
        &self.ops[..self.len]
    }

    /// Hands the recorded operations to `perform` (the executor's contract is in the module
    /// documentation), which returns how many it performed. Nothing is performed when more
    /// operations were recorded than the batch holds.
    pub fn run(&mut self, perform: impl FnOnce(&mut [RegOp]) -> usize) -> Result<(), Stopped> {
        if self.overflow {
            return Err(Stopped::Overflow);
        }
        let len = self.len;
        self.done = perform(&mut self.ops[..len]).min(len);
        if self.done == len {
            return Ok(());
        }
        match self.done.checked_sub(1).map(|last| (last, self.ops[last])) {
            Some((last, op)) if op.kind == OP_CHECK && op.value & op.mask != op.expect => {
                Err(Stopped::Check(OpIndex(last), op.value))
            }
            _ => Err(Stopped::Short(self.done)),
        }
    }

    /// The value a read or check at `i` returned, if the batch performed it.
    pub fn value(&self, i: OpIndex) -> Option<u32> {
        (i.0 < self.done).then(|| self.ops[i.0].value)
    }
}

/// The executor, in AT&T assembly for `global_asm!`: the function `kiln_perform_regops`
/// (`RDI` = the operations, `RSI` = how many; returns in `RAX` how many were performed;
/// every other register preserved, flags excepted). It performs each access as one 32-bit
/// `mov`, so it runs wherever the addresses are mapped; [`OP_WAIT`] (`sti; hlt; cli`) needs
/// CPL 0. The function runtime calls it from its ring-0 `#GP` handler; Kiln's tests run it
/// on ordinary memory.
#[macro_export]
macro_rules! batch_asm {
    () => {
        r#"
    .text
    .p2align 4
    .globl kiln_perform_regops
kiln_perform_regops:
    pushq %rcx
    pushq %rdx
    pushq %rdi
    xorl %eax, %eax
1:
    cmpq %rsi, %rax
    jae 5f
    movq (%rdi), %rcx
    movl 8(%rdi), %edx
    testl %edx, %edx
    jnz 3f
    movl 12(%rdi), %edx
    movl %edx, (%rcx)
    jmp 4f
3:
    cmpl $3, %edx
    je 6f
    ja 5f
    movl (%rcx), %ecx
    movl %ecx, 12(%rdi)
    cmpl $1, %edx
    je 4f
    andl 16(%rdi), %ecx
    cmpl 20(%rdi), %ecx
    je 4f
    incq %rax
    jmp 5f
6:
    sti
    hlt
    cli
4:
    incq %rax
    addq $24, %rdi
    jmp 1b
5:
    popq %rdi
    popq %rdx
    popq %rcx
    ret
"#
    };
}
