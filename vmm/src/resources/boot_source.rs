//! `boot-source`: the guest kernel, its command line and an optional initrd.
//!
//! The kernel and initrd are opened when the configuration is accepted (`PUT /boot-source`
//! or the config file), as Firecracker does, and kept open for `InstanceStart`.

use super::host_file::{held_or_open, open_image, Opened};
use super::ResourceError;
use serde::{Deserialize, Serialize};
use std::fs::File;

const KERNEL: &str = "boot-source: the kernel file";
const INITRD: &str = "boot-source: the initrd file";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// ELF vmlinux (64-bit Linux entry or PVH note) or bzImage.
    pub kernel_image_path: String,
    /// Kernel command line; the VMM appends its device entries. `None` means the default.
    #[serde(default)]
    pub boot_args: Option<String>,
    #[serde(default)]
    pub initrd_path: Option<String>,
    /// The kernel, opened by [`BootSourceConfig::validated`].
    #[serde(skip)]
    pub kernel: Opened,
    /// The initrd, opened by [`BootSourceConfig::validated`].
    #[serde(skip)]
    pub initrd: Opened,
}

/// The command line used when `boot_args` is not given (Firecracker's default).
pub const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

impl BootSourceConfig {
    /// Checks the command line, then opens the kernel and the initrd.
    pub(super) fn validated(mut self) -> Result<Self, ResourceError> {
        if let Some(args) = &self.boot_args {
            if args.contains('\0') {
                return Err(ResourceError::BadPath {
                    field: "boot-source.boot_args",
                    path: args.clone(),
                    reason: "the command line contains a NUL byte".into(),
                });
            }
        }
        self.kernel = Opened::hold(open_image(KERNEL, &self.kernel_image_path, false)?);
        self.initrd = match &self.initrd_path {
            Some(p) => Opened::hold(open_image(INITRD, p, false)?),
            None => Opened::default(),
        };
        Ok(self)
    }

    /// The kernel file for the loader: the one opened when the configuration was accepted.
    pub fn kernel_file(&self) -> Result<File, ResourceError> {
        held_or_open(&self.kernel, KERNEL, &self.kernel_image_path, false)
    }

    /// The initrd file for the loader, if there is one.
    pub fn initrd_file(&self) -> Option<Result<File, ResourceError>> {
        let path = self.initrd_path.as_deref()?;
        Some(held_or_open(&self.initrd, INITRD, path, false))
    }

    /// The command line the guest gets before the VMM appends device entries.
    pub fn boot_args_or_default(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}
