//! The Python clients of the Lambda tests (boto3, the AWS CLI, awslambdaric), installed by
//! scripts/python-clients.sh into a virtual environment under the cache directory.

use std::path::{Path, PathBuf};

/// The virtual environment's directory, panicking with how to get it when it is missing or
/// holds another version of tests/python/requirements.txt.
pub fn require_clients() -> PathBuf {
    let venv = crate::cache_dir().join("python").join("clients");
    let wanted = std::fs::read(requirements()).expect("read tests/python/requirements.txt");
    let have = std::fs::read(venv.join("kiln-requirements.txt")).unwrap_or_default();
    assert!(
        have == wanted && venv.join("bin/python").is_file(),
        "MISSING PRECONDITION: the Python clients of the Lambda tests (tests/python/requirements.txt) are not installed in {}; run scripts/python-clients.sh (the README's test command does)",
        venv.display()
    );
    venv
}

/// The pinned requirements.
pub fn requirements() -> PathBuf {
    dir().join("requirements.txt")
}

/// tests/python: the requirements and the tests' Python helpers.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// The version of an installed package, from its `.dist-info` directory name.
pub fn installed_version(venv: &Path, package: &str) -> Option<String> {
    let lib = venv.join("lib");
    let site = std::fs::read_dir(&lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())?;
    let prefix = format!("{}-", package.replace('-', "_"));
    std::fs::read_dir(site).ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        let rest = name.strip_suffix(".dist-info")?;
        rest.strip_prefix(&prefix).map(str::to_string)
    })
}
