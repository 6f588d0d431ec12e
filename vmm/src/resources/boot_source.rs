//! `boot-source`: the guest kernel, its command line and an optional initrd.

use super::{check_regular_file, ResourceError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// ELF vmlinux (64-bit Linux entry or PVH note) or bzImage.
    pub kernel_image_path: String,
    /// Kernel command line; the VMM appends its device entries. `None` means the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// The command line used when `boot_args` is not given (Firecracker's default).
pub const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

impl BootSourceConfig {
    pub(super) fn validated(self) -> Result<Self, ResourceError> {
        check_regular_file("boot-source.kernel_image_path", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            check_regular_file("boot-source.initrd_path", initrd)?;
        }
        if let Some(args) = &self.boot_args {
            if args.contains('\0') {
                return Err(ResourceError::BadPath {
                    field: "boot-source.boot_args",
                    path: args.clone(),
                    reason: "the command line contains a NUL byte".into(),
                });
            }
        }
        Ok(self)
    }

    /// The command line the guest gets before the VMM appends device entries.
    pub fn boot_args_or_default(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}
