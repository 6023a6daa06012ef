//! Recognising guest kernel images (ELF64 x86-64 `vmlinux` or x86 `bzImage`) and reading the
//! version string each format carries.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::KernelStoreError;

/// How a kernel image is packaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelFormat {
    /// An uncompressed ELF64 x86-64 `vmlinux`.
    Elf,
    /// A compressed x86 boot image with a real-mode setup header.
    BzImage,
}

impl fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelFormat::Elf => "ELF",
            KernelFormat::BzImage => "bzImage",
        })
    }
}

/// What we learn by reading an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: KernelFormat,
    /// The full version string, e.g. `6.1.0 (user@host) (gcc ...) #1 SMP ...`, when present.
    pub version_string: Option<String>,
}

impl ImageInfo {
    /// The kernel release: the first word of the version string (`6.1.0`).
    pub fn release(&self) -> Option<&str> {
        self.version_string
            .as_deref()
            .and_then(|s| s.split_whitespace().next())
    }
}

/// Bytes of the file start needed to tell the formats apart (the setup header ends by 0x210).
pub const HEADER_LEN: usize = 0x210;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

// x86 boot protocol (Documentation/arch/x86/boot.rst): offsets in the first sector.
const BOOT_FLAG_OFFSET: usize = 0x1FE;
const BOOT_FLAG: u16 = 0xAA55;
const HDRS_OFFSET: usize = 0x202;
const PROTOCOL_OFFSET: usize = 0x206;
const KERNEL_VERSION_OFFSET: usize = 0x20E;
/// `kernel_version` is relative to the start of the setup code, which follows the boot sector.
const SETUP_BASE: u64 = 0x200;

/// Longest version string we keep; real banners are ~150 bytes.
const MAX_VERSION_LEN: usize = 256;
const ELF_BANNER_MARKER: &[u8] = b"Linux version ";

fn le16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

/// Why a file's first bytes are not a kernel Volt can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAKernel {
    #[error("not a regular file")]
    NotARegularFile,
    #[error("truncated ELF header")]
    TruncatedElf,
    #[error("32-bit ELF; expected an ELF64 x86-64 vmlinux")]
    Elf32,
    #[error("big-endian ELF; expected an ELF64 x86-64 vmlinux")]
    BigEndian,
    #[error("ELF for machine {0}; expected x86-64 (e_machine {EM_X86_64})")]
    Machine(u16),
    #[error("ELF type {0} is not an executable (a vmlinux is ET_EXEC, {ET_EXEC})")]
    NotExecutable(u16),
    #[error("has a HdrS setup header but no 0xAA55 boot flag at 0x1FE")]
    NoBootFlag,
    #[error(
        "neither ELF (no \\x7fELF magic) nor bzImage (no \"HdrS\" at 0x202 with 0xAA55 at 0x1FE)"
    )]
    Unknown,
}

/// Decides the format from the first bytes of a file, or says why it is not a kernel.
pub fn detect_format(header: &[u8]) -> Result<KernelFormat, NotAKernel> {
    if header.starts_with(ELF_MAGIC) {
        if header.len() < 20 {
            return Err(NotAKernel::TruncatedElf);
        }
        if header[4] != ELFCLASS64 {
            return Err(NotAKernel::Elf32);
        }
        if header[5] != ELFDATA2LSB {
            return Err(NotAKernel::BigEndian);
        }
        let machine = le16(header, 18);
        if machine != EM_X86_64 {
            return Err(NotAKernel::Machine(machine));
        }
        // A vmlinux is a fixed-address executable; this also rejects PIE programs and objects.
        let elf_type = le16(header, 16);
        if elf_type != ET_EXEC {
            return Err(NotAKernel::NotExecutable(elf_type));
        }
        return Ok(KernelFormat::Elf);
    }
    if header.len() >= HEADER_LEN && &header[HDRS_OFFSET..HDRS_OFFSET + 4] == b"HdrS" {
        if le16(header, BOOT_FLAG_OFFSET) != BOOT_FLAG {
            return Err(NotAKernel::NoBootFlag);
        }
        return Ok(KernelFormat::BzImage);
    }
    Err(NotAKernel::Unknown)
}

/// Reads up to `buf.len()` bytes, stopping early only at end of file.
pub fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Checks only the header of `path`: a cheap early rejection of non-kernels.
pub fn check_header(path: &Path) -> Result<KernelFormat, KernelStoreError> {
    let mut file = File::open(path).map_err(KernelStoreError::io("cannot open", path))?;
    let mut header = [0u8; HEADER_LEN];
    let len =
        read_full(&mut file, &mut header).map_err(KernelStoreError::io("cannot read", path))?;
    detect_format(&header[..len]).map_err(|reason| KernelStoreError::NotAKernel {
        path: path.to_path_buf(),
        reason,
    })
}

/// Identifies the image at `path` and reads its version string.
pub fn inspect(path: &Path) -> Result<ImageInfo, KernelStoreError> {
    let format = check_header(path)?;
    let mut file = File::open(path).map_err(KernelStoreError::io("cannot open", path))?;
    let version_string = match format {
        KernelFormat::BzImage => bzimage_version(&mut file),
        KernelFormat::Elf => find_elf_banner(&mut file),
    }
    .map_err(KernelStoreError::io("cannot read", path))?;
    Ok(ImageInfo {
        format,
        version_string,
    })
}

/// Turns raw bytes into a version string if they look like one: printable ASCII starting with
/// a digit (which skips format strings such as "Linux version %s").
fn version_from_bytes(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?.trim_end();
    let looks_right = text.starts_with(|c: char| c.is_ascii_digit())
        && text.bytes().all(|b| (0x20..0x7f).contains(&b));
    looks_right.then(|| text.to_string())
}

/// The string the setup header's `kernel_version` field points at.
fn bzimage_version(file: &mut (impl Read + Seek)) -> io::Result<Option<String>> {
    let mut header = [0u8; HEADER_LEN];
    file.seek(SeekFrom::Start(0))?;
    if read_full(file, &mut header)? < HEADER_LEN {
        return Ok(None);
    }
    // The field exists from boot protocol 2.00 on; 0 means "not provided".
    let offset = le16(&header, KERNEL_VERSION_OFFSET);
    if le16(&header, PROTOCOL_OFFSET) < 0x0200 || offset == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(u64::from(offset) + SETUP_BASE))?;
    let mut text = [0u8; MAX_VERSION_LEN];
    let len = read_full(file, &mut text)?;
    let end = text[..len].iter().position(|&b| b == 0).unwrap_or(len);
    Ok(version_from_bytes(&text[..end]))
}

fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a banner carries a build number (`#1 SMP ...`).
fn has_build_number(version: &str) -> bool {
    version
        .split('#')
        .skip(1)
        .any(|after| after.starts_with(|c: char| c.is_ascii_digit()))
}

/// Scans a vmlinux for `Linux version <release> ...` (the kernel's `linux_banner`), reading in
/// chunks so a 50 MiB image is never held in memory.
///
/// Since 6.1 a vmlinux holds two banners: a placeholder from init/version.c without build
/// number (`... # SMP`) and the real one from init/version-timestamp.c (`... #1 SMP <date>`).
/// The first banner with a build number wins; otherwise the first banner found.
pub fn find_elf_banner(reader: &mut impl Read) -> io::Result<Option<String>> {
    let mut first_found = None;
    let mut window: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = read_full(reader, &mut chunk)?;
        let at_eof = n < chunk.len();
        window.extend_from_slice(&chunk[..n]);

        // Keep enough of the tail that a marker split across two chunks is still found.
        let mut keep_from = window.len().saturating_sub(ELF_BANNER_MARKER.len() - 1);
        let mut search_from = 0;
        while let Some(rel) = find_subslice(&window[search_from..], ELF_BANNER_MARKER) {
            let marker_at = search_from + rel;
            let text_start = marker_at + ELF_BANNER_MARKER.len();
            let text = &window[text_start..window.len().min(text_start + MAX_VERSION_LEN)];
            let terminator = text.iter().position(|&b| b == 0 || b == b'\n');
            if terminator.is_none() && text.len() < MAX_VERSION_LEN && !at_eof {
                // The banner continues in the next chunk.
                keep_from = marker_at;
                break;
            }
            if let Some(version) = version_from_bytes(&text[..terminator.unwrap_or(text.len())]) {
                if has_build_number(&version) {
                    return Ok(Some(version));
                }
                first_found.get_or_insert(version);
            }
            search_from = marker_at + 1;
        }
        if at_eof {
            return Ok(first_found);
        }
        window.drain(..keep_from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(ELF_MAGIC);
        h[4] = class;
        h[5] = data;
        h[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    fn bzimage(version: Option<&[u8]>) -> Vec<u8> {
        let mut image = vec![0u8; 0x1000];
        image[BOOT_FLAG_OFFSET..BOOT_FLAG_OFFSET + 2].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        image[HDRS_OFFSET..HDRS_OFFSET + 4].copy_from_slice(b"HdrS");
        image[PROTOCOL_OFFSET..PROTOCOL_OFFSET + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        if let Some(v) = version {
            let field = 0x300u16;
            image[KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2]
                .copy_from_slice(&field.to_le_bytes());
            let at = usize::from(field) + 0x200;
            image[at..at + v.len()].copy_from_slice(v);
        }
        image
    }

    #[test]
    fn detects_elf64_x86_64() {
        assert_eq!(detect_format(&elf_header(2, 1, 62)), Ok(KernelFormat::Elf));
    }

    #[test]
    fn rejects_other_elves() {
        let err = detect_format(&elf_header(1, 1, 62))
            .unwrap_err()
            .to_string();
        assert!(err.contains("32-bit"), "{err}");
        let err = detect_format(&elf_header(2, 2, 62))
            .unwrap_err()
            .to_string();
        assert!(err.contains("big-endian"), "{err}");
        let err = detect_format(&elf_header(2, 1, 183))
            .unwrap_err()
            .to_string();
        assert!(err.contains("machine 183"), "{err}");
        let mut shared_object = elf_header(2, 1, 62);
        shared_object[16] = 3; // ET_DYN, e.g. a PIE program such as /bin/ls
        let err = detect_format(&shared_object).unwrap_err().to_string();
        assert!(err.contains("not an executable"), "{err}");
        let err = detect_format(&ELF_MAGIC[..]).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn detects_bzimage_and_requires_boot_flag() {
        let mut image = bzimage(None);
        assert_eq!(detect_format(&image), Ok(KernelFormat::BzImage));
        image[BOOT_FLAG_OFFSET] = 0;
        let err = detect_format(&image).unwrap_err().to_string();
        assert!(err.contains("0xAA55"), "{err}");
    }

    #[test]
    fn rejects_random_data() {
        assert!(detect_format(b"#!/bin/sh\necho hi\n").is_err());
        assert!(detect_format(&[0u8; 4096]).is_err());
    }

    #[test]
    fn reads_bzimage_version_field() {
        let image = bzimage(Some(b"6.6.7-volt (me@box) #3 SMP\0"));
        let version = bzimage_version(&mut io::Cursor::new(image)).unwrap();
        assert_eq!(version.as_deref(), Some("6.6.7-volt (me@box) #3 SMP"));
        let none = bzimage_version(&mut io::Cursor::new(bzimage(None))).unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn finds_elf_banner_anywhere_and_skips_format_strings() {
        let mut data = vec![0xAAu8; 600_000];
        let fake = b"Linux version %s (%s)\0";
        data[1000..1000 + fake.len()].copy_from_slice(fake);
        let real = b"Linux version 6.1.0-test (b@h) (gcc 12) #1 SMP\n\0";
        data[400_000..400_000 + real.len()].copy_from_slice(real);
        let found = find_elf_banner(&mut io::Cursor::new(data)).unwrap();
        assert_eq!(found.as_deref(), Some("6.1.0-test (b@h) (gcc 12) #1 SMP"));
    }

    #[test]
    fn finds_elf_banner_split_across_chunks() {
        // Put the marker and the text across every possible chunk boundary offset near 256 KiB.
        let chunk = 256 * 1024;
        let real = b"Linux version 5.10.1 #1\0";
        for shift in 0..real.len() + 2 {
            let mut data = vec![0u8; chunk * 2];
            let at = chunk - shift;
            data[at..at + real.len()].copy_from_slice(real);
            let found = find_elf_banner(&mut io::Cursor::new(data)).unwrap();
            assert_eq!(found.as_deref(), Some("5.10.1 #1"), "shift {shift}");
        }
    }

    #[test]
    fn prefers_the_banner_with_a_build_number() {
        // The layout of a real 6.1 vmlinux: placeholder banner first, real one later.
        let mut data = vec![0u8; 700_000];
        let placeholder = b"Linux version 6.1.192 (root@vm) (gcc 12.2.0) # SMP \n\0";
        data[100..100 + placeholder.len()].copy_from_slice(placeholder);
        let real = b"Linux version 6.1.192 (root@vm) (gcc 12.2.0) #1 SMP Wed Nov 25\n\0";
        data[600_000..600_000 + real.len()].copy_from_slice(real);
        let found = find_elf_banner(&mut io::Cursor::new(data.clone())).unwrap();
        assert_eq!(
            found.as_deref(),
            Some("6.1.192 (root@vm) (gcc 12.2.0) #1 SMP Wed Nov 25")
        );
        // Without the real one, the placeholder is still a version.
        data[600_000..600_000 + real.len()].fill(0);
        let found = find_elf_banner(&mut io::Cursor::new(data)).unwrap();
        assert_eq!(
            found.as_deref(),
            Some("6.1.192 (root@vm) (gcc 12.2.0) # SMP")
        );
    }

    #[test]
    fn no_banner_is_none() {
        let found = find_elf_banner(&mut io::Cursor::new(vec![7u8; 10_000])).unwrap();
        assert_eq!(found, None);
    }

    #[test]
    fn release_is_first_word() {
        let info = ImageInfo {
            format: KernelFormat::Elf,
            version_string: Some("6.1.0-test (b@h) #1".into()),
        };
        assert_eq!(info.release(), Some("6.1.0-test"));
    }
}
