//! Loading the kernel (ELF vmlinux or bzImage), the command line and the initrd into guest
//! memory, with linux-loader doing the actual copying.

use std::io::{self, Read, Seek, SeekFrom};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

use super::layout::{
    guest_mem_bytes, low_ram_end, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PAGE_SIZE,
};

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// "HdrS" at offset 0x202 marks a bzImage setup header.
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the 64-bit entry point (startup_64) from the protected-mode load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Boot protocol 2.06: the first with cmdline_size; anything older cannot be booted in 64-bit.
const MIN_BOOT_PROTOCOL: u16 = 0x206;
/// Boot protocol 2.12 introduced xloadflags (XLF_KERNEL_64).
const XLOADFLAGS_PROTOCOL: u16 = 0x20c;
const XLF_KERNEL_64: u16 = 1;
const PT_LOAD: u32 = 1;
const MIB: u64 = 1 << 20;

/// Errors while loading the kernel, command line or initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("kernel image is neither ELF vmlinux nor bzImage")]
    NotAKernel,
    #[error("cannot read the {what}: {source}")]
    Unreadable {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("kernel needs {needed} bytes at {start:#x} but guest memory below {end:#x} has room for {available} ({mem_mib} MiB total)")]
    KernelTooBig {
        start: u64,
        needed: u64,
        available: u64,
        end: u64,
        mem_mib: u64,
    },
    #[error(
        "ELF kernel segment at {0:#x} lies below 1 MiB; the kernel must be linked at or above it"
    )]
    BelowHimem(u64),
    #[error("bzImage boot protocol {0:#x} is too old (need 2.06 or newer)")]
    OldBootProtocol(u16),
    #[error("bzImage has no 64-bit entry point (XLF_KERNEL_64 is not set)")]
    No64BitEntry,
    #[error("invalid kernel image: {0}")]
    Invalid(loader::Error),
    #[error("kernel command line is {len} bytes, the limit is {max} (NUL included)")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line to guest memory: {0}")]
    CmdlineWrite(loader::Error),
    #[error("initrd of {size} bytes does not fit in {mem_mib} MiB of guest memory")]
    InitrdTooBig { size: u64, mem_mib: u64 },
}

/// Where the kernel ended up.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// 64-bit entry point (ELF e_entry, or bzImage load address + 0x200).
    pub entry: GuestAddress,
    /// First byte after everything the kernel occupies (memsz / init_size included).
    pub end: u64,
    /// The bzImage setup header (None for ELF), to be copied into boot_params.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: GuestAddress,
    pub size: u64,
}

enum KernelFormat {
    Elf,
    BzImage,
}

fn unreadable(what: &'static str) -> impl FnOnce(io::Error) -> LoaderError {
    move |source| LoaderError::Unreadable { what, source }
}

/// Reads `buf.len()` bytes at `offset`; Ok(false) when the file is too short.
fn read_at<F: Read + Seek>(file: &mut F, offset: u64, buf: &mut [u8]) -> Result<bool, LoaderError> {
    file.seek(SeekFrom::Start(offset))
        .map_err(unreadable("kernel image"))?;
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(unreadable("kernel image")(e)),
    }
}

fn detect_format<F: Read + Seek>(kernel: &mut F) -> Result<KernelFormat, LoaderError> {
    let mut magic = [0u8; 4];
    if read_at(kernel, 0, &mut magic)? && magic == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    if read_at(kernel, BZIMAGE_MAGIC_OFFSET, &mut magic)? && magic == BZIMAGE_MAGIC {
        return Ok(KernelFormat::BzImage);
    }
    Err(LoaderError::NotAKernel)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Physical span [lowest p_paddr, highest p_paddr + p_memsz) of the PT_LOAD segments, from the
/// ELF64 program headers; lets us say "too big" before linux-loader fails half way.
/// None when there is nothing to check (linux-loader then reports the problem).
fn elf_load_span<F: Read + Seek>(kernel: &mut F) -> Result<Option<(u64, u64)>, LoaderError> {
    let mut ehdr = [0u8; 64];
    if !read_at(kernel, 0, &mut ehdr)? {
        return Err(LoaderError::NotAKernel);
    }
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u64::from(u16_at(&ehdr, 0x36));
    let phnum = u64::from(u16_at(&ehdr, 0x38));
    if phentsize < 56 {
        return Ok(None);
    }
    let mut span: Option<(u64, u64)> = None;
    for i in 0..phnum {
        let mut phdr = [0u8; 56];
        if !read_at(kernel, phoff.saturating_add(i * phentsize), &mut phdr)? {
            return Ok(None);
        }
        if u32_at(&phdr, 0) == PT_LOAD {
            let paddr = u64_at(&phdr, 0x18);
            let end = paddr.saturating_add(u64_at(&phdr, 0x28));
            span = Some(match span {
                None => (paddr, end),
                Some((lo, hi)) => (lo.min(paddr), hi.max(end)),
            });
        }
    }
    Ok(span)
}

fn check_fits(mem: &GuestMemoryMmap, start: u64, end: u64) -> Result<(), LoaderError> {
    let mem_bytes = guest_mem_bytes(mem);
    let ram_end = low_ram_end(mem_bytes);
    if end > ram_end {
        return Err(LoaderError::KernelTooBig {
            start,
            needed: end.saturating_sub(start),
            available: ram_end.saturating_sub(start),
            end: ram_end,
            mem_mib: mem_bytes / MIB,
        });
    }
    Ok(())
}

/// Loads an ELF vmlinux (at its physical addresses, which must be >= HIMEM) or a bzImage (at
/// HIMEM) and returns its 64-bit entry point.
pub fn load_kernel<F>(mem: &GuestMemoryMmap, kernel: &mut F) -> Result<LoadedKernel, LoaderError>
where
    F: Read + ReadVolatile + Seek,
{
    let himem = GuestAddress(HIMEM_START);
    match detect_format(kernel)? {
        KernelFormat::Elf => {
            if let Some((start, end)) = elf_load_span(kernel)? {
                if start < HIMEM_START {
                    return Err(LoaderError::BelowHimem(start));
                }
                check_fits(mem, start, end)?;
            }
            let result = Elf::load(mem, None, kernel, Some(himem)).map_err(LoaderError::Invalid)?;
            Ok(LoadedKernel {
                entry: result.kernel_load,
                end: result.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let mut raw = [0u8; std::mem::size_of::<setup_header>()];
            if !read_at(kernel, BZIMAGE_HEADER_OFFSET, &mut raw)? {
                return Err(LoaderError::NotAKernel);
            }
            let version = u16_at(&raw, 0x206 - 0x1f1);
            let setup_sects = match raw[0] {
                0 => 4,
                n => u64::from(n),
            };
            let xloadflags = u16_at(&raw, 0x236 - 0x1f1);
            let init_size = u64::from(u32_at(&raw, 0x260 - 0x1f1));
            if version < MIN_BOOT_PROTOCOL {
                return Err(LoaderError::OldBootProtocol(version));
            }
            if version >= XLOADFLAGS_PROTOCOL && xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::No64BitEntry);
            }
            let file_len = kernel
                .seek(SeekFrom::End(0))
                .map_err(unreadable("kernel image"))?;
            let payload = file_len.saturating_sub((setup_sects + 1) * 512);
            // The decompressor works in place and needs at least init_size bytes from the load
            // address (more if it moves itself up to its preferred address): a lower bound.
            let end = HIMEM_START + payload.max(init_size);
            check_fits(mem, HIMEM_START, end)?;
            let result = BzImage::load(mem, Some(himem), kernel, Some(himem))
                .map_err(LoaderError::Invalid)?;
            Ok(LoadedKernel {
                entry: result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                end: result.kernel_end.max(end),
                setup_header: result.setup_header,
            })
        }
    }
}

/// Writes `cmdline` (NUL-terminated) at [`CMDLINE_START`]; returns its size with the NUL.
/// `kernel_max` is the kernel's own limit from the setup header (0: none given).
pub fn load_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    kernel_max: u32,
) -> Result<usize, LoaderError> {
    let mut max = CMDLINE_MAX_SIZE;
    if kernel_max != 0 {
        max = max.min(kernel_max as usize + 1);
    }
    let cmdline = Cmdline::try_from(cmdline, max).map_err(|e| match e {
        // try_from reports a line longer than the capacity as InvalidCapacity.
        linux_loader::cmdline::Error::TooLarge | linux_loader::cmdline::Error::InvalidCapacity => {
            LoaderError::CmdlineTooLong {
                len: cmdline.len() + 1,
                max,
            }
        }
        e => LoaderError::Cmdline(e),
    })?;
    let size = cmdline
        .as_cstring()
        .map_err(LoaderError::Cmdline)?
        .as_bytes_with_nul()
        .len();
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(LoaderError::CmdlineWrite)?;
    Ok(size)
}

/// Copies the initrd page-aligned to the top of low RAM (below `addr_max`, the kernel's
/// initrd_addr_max, if given) and above `kernel_end`.
pub fn load_initrd<F>(
    mem: &GuestMemoryMmap,
    initrd: &mut F,
    kernel_end: u64,
    addr_max: Option<u64>,
) -> Result<InitrdPlacement, LoaderError>
where
    F: Read + ReadVolatile + Seek,
{
    let size = initrd
        .seek(SeekFrom::End(0))
        .map_err(unreadable("initrd"))?;
    initrd
        .seek(SeekFrom::Start(0))
        .map_err(unreadable("initrd"))?;
    let mem_bytes = guest_mem_bytes(mem);
    let mut top = low_ram_end(mem_bytes);
    if let Some(max) = addr_max {
        top = top.min(max.saturating_add(1));
    }
    let lowest = kernel_end.next_multiple_of(PAGE_SIZE);
    let too_big = LoaderError::InitrdTooBig {
        size,
        mem_mib: mem_bytes / MIB,
    };
    let addr = match top.checked_sub(size) {
        Some(a) => a & !(PAGE_SIZE - 1),
        None => return Err(too_big),
    };
    if addr < lowest {
        return Err(too_big);
    }
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, super::layout::to_usize(size))
        .map_err(|e| LoaderError::Unreadable {
            what: "initrd",
            source: io::Error::other(e),
        })?;
    Ok(InitrdPlacement {
        addr: GuestAddress(addr),
        size,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    pub(crate) const TEST_MEM: usize = 32 << 20;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    /// A minimal ELF64 executable: header, one PT_LOAD of `code` at `paddr`, entry at `paddr`.
    pub(crate) fn tiny_elf(paddr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x78];
        f[0..4].copy_from_slice(&ELF_MAGIC);
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little endian
        f[6] = 1; // EV_CURRENT
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
        f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        f[0x18..0x20].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 0x40;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        f[ph + 8..ph + 0x10].copy_from_slice(&0x78u64.to_le_bytes()); // p_offset
        f[ph + 0x10..ph + 0x18].copy_from_slice(&paddr.to_le_bytes()); // p_vaddr
        f[ph + 0x18..ph + 0x20].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
        f[ph + 0x20..ph + 0x28].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[ph + 0x28..ph + 0x30].copy_from_slice(&memsz.to_le_bytes());
        f[ph + 0x30..ph + 0x38].copy_from_slice(&0x1000u64.to_le_bytes()); // p_align
        f.extend_from_slice(code);
        f
    }

    /// A minimal bzImage: boot sector + `setup_sects` sectors, then `payload`.
    pub(crate) fn tiny_bzimage(version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
        let setup_sects = 1u8;
        let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        f[0x1f1] = setup_sects;
        f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[0x202..0x206].copy_from_slice(&BZIMAGE_MAGIC);
        f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        f[0x211] = 1; // loadflags: LOADED_HIGH
        f[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes()); // code32_start
        f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
        f[0x234] = 1; // relocatable
        f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        f[0x260..0x264].copy_from_slice(&0x1000u32.to_le_bytes()); // init_size
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn loads_a_hand_made_elf() {
        let mem = mem(TEST_MEM);
        let code = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0xf4];
        let image = tiny_elf(0x200000, &code, 0x3000);
        let k = load_kernel(&mem, &mut Cursor::new(image)).unwrap();
        assert_eq!(k.entry, GuestAddress(0x200000));
        assert_eq!(k.end, 0x203000, "bss (memsz) counted");
        assert!(k.setup_header.is_none());
        let mut got = [0u8; 8];
        mem.read_slice(&mut got, GuestAddress(0x200000)).unwrap();
        assert_eq!(got, code);
    }

    #[test]
    fn elf_below_himem_is_rejected() {
        let mem = mem(TEST_MEM);
        let image = tiny_elf(0x1000, &[0xf4], 1);
        let err = load_kernel(&mem, &mut Cursor::new(image)).unwrap_err();
        assert!(matches!(err, LoaderError::BelowHimem(0x1000)), "{err}");
    }

    #[test]
    fn elf_too_big_for_memory() {
        let mem = mem(TEST_MEM);
        let image = tiny_elf(0x100000, &[0xf4; 16], 64 << 20);
        let err = load_kernel(&mem, &mut Cursor::new(image)).unwrap_err();
        assert!(
            matches!(err, LoaderError::KernelTooBig { mem_mib: 32, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("32 MiB"), "{err}");
    }

    #[test]
    fn loads_a_fake_bzimage_at_himem() {
        let mem = mem(TEST_MEM);
        let payload: Vec<u8> = (0..0x800u32).map(|i| (i * 7).to_le_bytes()[0]).collect();
        let image = tiny_bzimage(0x20f, XLF_KERNEL_64, &payload);
        let k = load_kernel(&mem, &mut Cursor::new(image)).unwrap();
        assert_eq!(k.entry, GuestAddress(HIMEM_START + 0x200));
        assert_eq!(k.end, HIMEM_START + 0x1000, "init_size beyond the payload");
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.version }, 0x20f);
        assert_eq!({ hdr.code32_start }, u32::try_from(HIMEM_START).unwrap());
        let mut got = vec![0u8; payload.len()];
        mem.read_slice(&mut got, GuestAddress(HIMEM_START)).unwrap();
        assert_eq!(got, payload);
    }

    #[test]
    fn bzimage_protocol_checks() {
        let mem = mem(TEST_MEM);
        let old = tiny_bzimage(0x205, 0, &[0; 512]);
        let err = load_kernel(&mem, &mut Cursor::new(old)).unwrap_err();
        assert!(matches!(err, LoaderError::OldBootProtocol(0x205)), "{err}");
        let no64 = tiny_bzimage(0x20f, 0, &[0; 512]);
        let err = load_kernel(&mem, &mut Cursor::new(no64)).unwrap_err();
        assert!(matches!(err, LoaderError::No64BitEntry), "{err}");
        // 2.06 predates xloadflags: accepted without it.
        let v206 = tiny_bzimage(0x206, 0, &[0; 512]);
        load_kernel(&mem, &mut Cursor::new(v206)).unwrap();
    }

    #[test]
    fn bzimage_too_big_for_memory() {
        let mem = mem(4 << 20);
        let image = tiny_bzimage(0x20f, XLF_KERNEL_64, &vec![0x90; (3 << 20) + 1]);
        let err = load_kernel(&mem, &mut Cursor::new(image)).unwrap_err();
        assert!(matches!(err, LoaderError::KernelTooBig { .. }), "{err}");
    }

    #[test]
    fn truncated_bzimage_header_is_not_a_kernel() {
        let mem = mem(TEST_MEM);
        let mut image = tiny_bzimage(0x20f, XLF_KERNEL_64, &[]);
        image.truncate(0x210);
        let err = load_kernel(&mem, &mut Cursor::new(image)).unwrap_err();
        assert!(matches!(err, LoaderError::NotAKernel), "{err}");
    }

    #[test]
    fn not_a_kernel() {
        let mem = mem(TEST_MEM);
        for junk in [vec![], vec![0u8; 16], vec![0x5a; 4096]] {
            let err = load_kernel(&mem, &mut Cursor::new(junk)).unwrap_err();
            assert!(matches!(err, LoaderError::NotAKernel), "{err}");
            assert_eq!(
                err.to_string(),
                "kernel image is neither ELF vmlinux nor bzImage"
            );
        }
    }

    #[test]
    fn cmdline_written_with_nul() {
        let mem = mem(TEST_MEM);
        let size = load_cmdline(&mem, "console=ttyS0 reboot=k panic=1", 0).unwrap();
        assert_eq!(size, 31);
        let mut got = [0u8; 32];
        mem.read_slice(&mut got, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&got[..31], b"console=ttyS0 reboot=k panic=1\0");
    }

    #[test]
    fn cmdline_too_long() {
        let mem = mem(TEST_MEM);
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        let err = load_cmdline(&mem, &long, 0).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::CmdlineTooLong {
                    len: 2049,
                    max: 2048
                }
            ),
            "{err}"
        );
        // The kernel's own, smaller limit applies too.
        let err = load_cmdline(&mem, &"b".repeat(300), 255).unwrap_err();
        assert!(
            matches!(err, LoaderError::CmdlineTooLong { max: 256, .. }),
            "{err}"
        );
        assert_eq!(load_cmdline(&mem, &"c".repeat(2047), 0).unwrap(), 2048);
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top() {
        let mem = mem(TEST_MEM);
        let data: Vec<u8> = (0..5000u32).map(|i| i.to_le_bytes()[0]).collect();
        let p = load_initrd(&mem, &mut Cursor::new(data.clone()), 0x200000, None).unwrap();
        assert_eq!(p.size, 5000);
        assert_eq!(p.addr.raw_value() % PAGE_SIZE, 0);
        assert_eq!(p.addr.raw_value(), TEST_MEM as u64 - 0x2000);
        let mut got = vec![0u8; 5000];
        mem.read_slice(&mut got, p.addr).unwrap();
        assert_eq!(got, data);
        // initrd_addr_max caps the placement.
        let p = load_initrd(&mem, &mut Cursor::new(data), 0x200000, Some(0xffffff)).unwrap();
        assert_eq!(p.addr.raw_value(), 0x1000000 - 0x2000);
    }

    #[test]
    fn initrd_that_does_not_fit() {
        let mem = mem(TEST_MEM);
        let big = vec![0u8; 31 << 20];
        let err = load_initrd(&mem, &mut Cursor::new(big), 0x200000, None).unwrap_err();
        assert!(
            matches!(err, LoaderError::InitrdTooBig { mem_mib: 32, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "initrd of {} bytes does not fit in 32 MiB of guest memory",
                31 << 20
            )
        );
        let bigger = vec![0u8; 40 << 20];
        assert!(load_initrd(&mem, &mut Cursor::new(bigger), 0, None).is_err());
    }
}
