//! Store names: what is allowed, and what a kernel is called when `--name` is not given.

use std::path::Path;

use super::{ImageInfo, KernelStoreError};

pub const MAX_NAME_LEN: usize = 128;
/// File names too generic to name a kernel when the image tells us its release.
const GENERIC_FILE_NAMES: &[&str] = &["vmlinux", "vmlinuz", "bzImage", "Image", "kernel"];

/// Checks that `name` can be a store name: `[A-Za-z0-9._-]{1,128}`, not starting with '.'
/// (which also rules out `.`, `..` and the store's own dot files).
pub fn validate_name(name: &str) -> Result<(), KernelStoreError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 128 characters")
    } else if name.contains('/') || name.contains('\\') {
        Some("it contains a path separator")
    } else if name.starts_with('.') {
        Some("it may not start with '.'")
    } else if !name.bytes().all(is_name_byte) {
        Some("only letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(KernelStoreError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Makes a candidate name valid: disallowed characters become '_', leading dots go.
fn sanitize_name(raw: &str) -> String {
    let replaced: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii() && is_name_byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = replaced.trim_start_matches('.');
    trimmed.chars().take(MAX_NAME_LEN).collect()
}

/// The name a kernel gets without `--name`: its file name, unless that is a generic
/// `vmlinux`/`bzImage`-style name and the image carries a release, which then names it.
pub fn derive_name(source: &Path, info: &ImageInfo) -> Result<String, KernelStoreError> {
    let file_name = source.file_name().map(|f| f.to_string_lossy().into_owned());
    let is_generic = file_name
        .as_deref()
        .is_some_and(|f| GENERIC_FILE_NAMES.contains(&f));
    let candidates: Vec<&str> = if is_generic {
        [info.release(), file_name.as_deref()]
    } else {
        [file_name.as_deref(), info.release()]
    }
    .into_iter()
    .flatten()
    .collect();
    candidates
        .into_iter()
        .map(sanitize_name)
        .find(|name| validate_name(name).is_ok())
        .ok_or_else(|| KernelStoreError::CannotDeriveName {
            path: source.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_store::KernelFormat;

    #[test]
    fn valid_names() {
        for name in ["a", "vmlinux-6.1.0", "My_Kernel.v2", "6.1.0-test", "x-"] {
            validate_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn invalid_names_say_why() {
        let cases = [
            ("", "empty"),
            ("a/b", "path separator"),
            ("../x", "path separator"),
            ("a\\b", "path separator"),
            (".", "start with '.'"),
            ("..", "start with '.'"),
            (".lock", "start with '.'"),
            ("has space", "only letters"),
            ("ünï", "only letters"),
            ("a+b", "only letters"),
        ];
        for (name, why) in cases {
            let err = validate_name(name).unwrap_err().to_string();
            assert!(err.contains(why), "{name:?}: {err}");
            assert!(err.contains(&format!("`{name}`")), "{name:?}: {err}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(validate_name(&long).is_err());
        assert!(validate_name(&long[1..]).is_ok());
    }

    #[test]
    fn sanitize_makes_names_valid() {
        assert_eq!(sanitize_name("my kernel+1.bin"), "my_kernel_1.bin");
        assert_eq!(sanitize_name("..hidden"), "hidden");
        assert_eq!(sanitize_name("6.1.0+"), "6.1.0_");
    }

    fn info(release: Option<&str>) -> ImageInfo {
        ImageInfo {
            format: KernelFormat::Elf,
            version_string: release.map(|r| format!("{r} (b@h) #1 SMP")),
        }
    }

    #[test]
    fn derived_name_prefers_specific_file_name() {
        let name =
            derive_name(Path::new("/boot/vmlinux-6.1-custom"), &info(Some("6.1.0"))).unwrap();
        assert_eq!(name, "vmlinux-6.1-custom");
    }

    #[test]
    fn derived_name_uses_release_for_generic_file_names() {
        let name = derive_name(
            Path::new("/build/arch/x86/boot/bzImage"),
            &info(Some("6.6.7+")),
        );
        assert_eq!(name.unwrap(), "6.6.7_");
        // Without a release the generic name is still better than nothing.
        let name = derive_name(Path::new("/build/vmlinux"), &info(None)).unwrap();
        assert_eq!(name, "vmlinux");
    }

    #[test]
    fn derived_name_fails_when_nothing_fits() {
        let err = derive_name(Path::new("/"), &info(None)).unwrap_err();
        assert!(
            matches!(err, KernelStoreError::CannotDeriveName { .. }),
            "{err}"
        );
    }
}
