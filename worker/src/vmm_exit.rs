//! The VMM's exit codes that the worker interprets: a documented contract (docs/vmm.md,
//! "Exit codes"), not an import of the `vmm` crate. The jailer's supervisor exits with its
//! VMM's code, so the worker reads them from the supervisor's exit status.
//!
//! Declare here only the codes the worker acts on; a unit test checks each against the
//! table in docs/vmm.md.

/// `vmm --strict-io` stopped the microVM: the guest accessed an I/O port or MMIO address
/// with no device. An invocation that ends so fails with `io_violation`.
pub const STRICT_IO: i32 = 6;

#[cfg(test)]
mod tests {
    /// Each code the worker acts on has its row in docs/vmm.md's exit-code table.
    #[test]
    fn codes_match_the_documented_contract() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/vmm.md");
        let text = std::fs::read_to_string(&doc)
            .unwrap_or_else(|e| panic!("cannot read the VMM's contract {}: {e}", doc.display()));
        let row = format!("| {} | `--strict-io`:", super::STRICT_IO);
        assert!(
            text.lines().any(|l| l.starts_with(&row)),
            "docs/vmm.md has no exit-code row starting {row:?}"
        );
    }
}
