//! Unit tests of the store's pure helpers; whole-store behaviour is in `tests/kernel_store.rs`.

use super::*;

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
    let name = derive_name(Path::new("/boot/vmlinux-6.1-custom"), &info(Some("6.1.0"))).unwrap();
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

#[test]
fn store_dir_precedence() {
    let s = |v: &str| Some(OsString::from(v));
    assert_eq!(
        store_dir_from(s("/v"), s("/x"), s("/h")),
        Some(PathBuf::from("/v"))
    );
    assert_eq!(
        store_dir_from(None, s("/x"), s("/h")),
        Some(PathBuf::from("/x/volt/kernels"))
    );
    assert_eq!(
        store_dir_from(s(""), s("relative"), s("/h")),
        Some(PathBuf::from("/h/.local/share/volt/kernels"))
    );
    assert_eq!(store_dir_from(None, None, None), None);
}
