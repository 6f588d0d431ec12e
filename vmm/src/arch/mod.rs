//! Architecture-specific parts of the VMM. Kiln runs on x86_64 only.

pub mod x86_64;
