//! The instruction audit of a guest ELF: `objdump -d`, then every instruction the ring-0
//! instruction emulator of the development hosts is known to fail on (shared notes,
//! host-kvm.md) is an error: SSE/AVX/MMX/x87 (`%xmm`, `%ymm`, `%zmm`, `%mm`, `%st`, any `f...`
//! mnemonic), `wait`/`fwait`, `cmpxchg16b`, `xsave*`/`xrstor*`, and `int3` other than the
//! padding after a call, return or jump. The 32-bit PVH entry stub (`kiln_pvh_entry`) is
//! skipped: objdump decodes it as 64-bit code.
//!
//! Function images run their code at CPL 3, natively, where these instructions would work;
//! the audit still holds them to the same rule, because MMIO and port accesses are emulated
//! whatever the ring and because the flags promise code without SSE.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why an ELF failed the audit.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot run objdump (install binutils) to audit {path}: {source}")]
    Objdump {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("objdump -d {path} failed ({status}): {stderr}")]
    ObjdumpFailed {
        path: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "{path} contains instructions the ring-0 emulator of the development hosts fails on \
         (see guest/tiny/README.md):\n{}",
        lines.join("\n")
    )]
    Unsupported { path: PathBuf, lines: Vec<String> },
}

/// Disassembles `elf` and fails on any unsupported instruction.
pub fn audit_elf(elf: &Path) -> Result<(), AuditError> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-M", "att"])
        .arg(elf)
        .output()
        .map_err(|source| AuditError::Objdump {
            path: elf.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(AuditError::ObjdumpFailed {
            path: elf.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let lines = find_unsupported(&String::from_utf8_lossy(&out.stdout));
    if lines.is_empty() {
        Ok(())
    } else {
        Err(AuditError::Unsupported {
            path: elf.to_path_buf(),
            lines,
        })
    }
}

/// Lines of `objdump -d` output with unsupported instructions.
pub fn find_unsupported(disassembly: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut in_32bit_stub = false;
    let mut previous = String::new();
    for line in disassembly.lines() {
        if line.ends_with(">:") {
            in_32bit_stub = line.contains("<kiln_pvh_entry>");
            previous.clear();
            continue;
        }
        let mut fields = line.splitn(2, '\t');
        let (Some(addr), Some(insn)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !addr.trim_end().ends_with(':') || in_32bit_stub {
            continue;
        }
        let insn = insn.trim();
        let words: Vec<&str> = insn.split_whitespace().collect();
        let mnemonic = words
            .iter()
            .find(|w| !matches!(**w, "lock" | "rep" | "repz" | "repnz"))
            .copied()
            .unwrap_or("");
        let after_transfer = ["call", "ret", "jmp", "int3", "ud2", "lretq", "iretq"]
            .iter()
            .any(|t| previous.starts_with(t));
        let unsupported = insn.contains("%xmm")
            || insn.contains("%ymm")
            || insn.contains("%zmm")
            || insn.contains("%st")
            || insn.contains("%mm")
            || mnemonic.starts_with('f')
            || mnemonic == "wait"
            || mnemonic.starts_with("cmpxchg16b")
            || mnemonic.starts_with("xsave")
            || mnemonic.starts_with("xrstor")
            || (mnemonic == "int3" && !after_transfer);
        if unsupported {
            bad.push(format!("  {}\t{insn}", addr.trim()));
        }
        previous = mnemonic.to_string();
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_what_the_emulator_cannot_run() {
        let text = "\
0000000000100000 <kiln_pvh_entry>:
  100000:\tmovl   %ebx,%esi
  100002:\tfld    %st(0)
0000000000100100 <f>:
  100100:\txorps  %xmm0,%xmm0
  100103:\tret
  100104:\tint3
  100105:\tint3
  100106:\tlock cmpxchg16b (%rdi)
  10010b:\tfwait
  10010c:\txsave (%rax)
  10010f:\tmov    %rax,%rbx
  100112:\tint3
";
        let bad = find_unsupported(text);
        let addrs: Vec<&str> = bad
            .iter()
            .map(|l| l.trim().split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            addrs,
            ["100100", "100106", "10010b", "10010c", "100112"],
            "{bad:?}"
        );
    }
}
