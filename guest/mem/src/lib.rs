//! The memory routines the compiler may call (`memcpy`, `memmove`, `memset`, `memcmp`,
//! `bcmp`). There is no libc, and the `compiler_builtins` of the linux-gnu target does not
//! provide them. The copies use `rep movsb`/`rep stosb` so that they cannot be turned back
//! into calls to themselves.

#![no_std]

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest` (non-overlapping).
///
/// # Safety
/// The C contract: both ranges are valid for `n` bytes and do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; DF is clear (the entry does
    // `cld` and no code sets it).
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
/// The C contract: both ranges are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n == 0
        || (dest as usize) <= (src as usize)
        || (dest as usize) >= (src as usize).wrapping_add(n)
    {
        // SAFETY: a forward copy is correct when dest is below src or past its end.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: backward copy (DF set for the duration of the instruction only) of ranges
    // the caller guarantees to be valid; rsi/rdi start at the last byte of each range.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
    dest
}

/// Fills `n` bytes at `dest` with the low byte of `c` (C's conversion to unsigned char).
///
/// # Safety
/// The C contract: the range is valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid; DF is clear.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") c.to_le_bytes()[0],
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// Compares `n` bytes; returns the difference of the first differing bytes, or 0.
///
/// # Safety
/// The C contract: both ranges are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees both ranges are valid for `n` bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Like `memcmp` but only says whether the ranges differ.
///
/// # Safety
/// The C contract: both ranges are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
