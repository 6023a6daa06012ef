//! The guest-memory file: guest RAM regions one after the other, all-zero pages left as holes
//! (a sparse file). Restoring maps it `MAP_PRIVATE`: nothing is read up front, each page is
//! faulted in from the page cache when the guest touches it, the guest's writes stay private
//! to the process, and many restored clones share one copy in the page cache.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Pages compared against zero at a time when writing the file.
const PAGE: usize = 4096;

/// Where one guest RAM region lies in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSnapshot {
    pub guest_addr: u64,
    pub len: u64,
    pub file_offset: u64,
}

/// Writes guest RAM into `file` (which must be empty); returns the layout. The vCPUs must be
/// paused and the devices idle (the caller is the loop that owns them).
pub fn write_memory(mem: &GuestMemoryMmap, file: &File) -> io::Result<Vec<RegionSnapshot>> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    // Holes read as zeros: only non-zero pages are written.
    file.set_len(total)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(io::Error::other)?;
        let len = usize::try_from(region.len()).map_err(io::Error::other)?;
        // SAFETY: `host..host+len` is this region's live mapping, owned by `mem` which we
        // borrow; the vCPUs are paused and this thread owns the devices, so nothing writes
        // guest memory while we read it.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        write_nonzero_runs(file, bytes, offset)?;
        regions.push(RegionSnapshot {
            guest_addr: region.start_addr().raw_value(),
            len: region.len(),
            file_offset: offset,
        });
        offset += region.len();
    }
    Ok(regions)
}

/// Writes every run of pages of `bytes` that is not all zeros at `base` + its offset.
fn write_nonzero_runs(file: &File, bytes: &[u8], base: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut page_start = 0;
    while page_start < bytes.len() {
        let page_end = (page_start + PAGE).min(bytes.len());
        let zero = bytes[page_start..page_end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(page_start),
            (true, Some(start)) => {
                file.write_all_at(&bytes[start..page_start], base + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
        page_start = page_end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&bytes[start..], base + start as u64)?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("the snapshot's memory layout {saved:?} is not the layout of a {mem_mib} MiB guest")]
    Layout {
        saved: Vec<RegionSnapshot>,
        mem_mib: u64,
    },
    #[error("the memory file is {have} bytes; the snapshot needs {want}")]
    Size { have: u64, want: u64 },
    #[error("cannot map the memory file: {0}")]
    Map(String),
}

/// Maps `file` as guest memory, private and lazily faulted, after checking that `regions`
/// are exactly `expected` (the RAM layout of the machine) and the file has their size.
pub fn map_memory(
    file: File,
    regions: &[RegionSnapshot],
    expected: &[(GuestAddress, usize)],
    mem_bytes: u64,
) -> Result<GuestMemoryMmap, MapError> {
    let layout_ok = regions.len() == expected.len()
        && regions
            .iter()
            .zip(expected)
            .fold((true, 0u64), |(ok, off), (r, e)| {
                let same =
                    r.guest_addr == e.0.raw_value() && r.len == e.1 as u64 && r.file_offset == off;
                (ok && same, off + r.len)
            })
            .0;
    if !layout_ok {
        return Err(MapError::Layout {
            saved: regions.to_vec(),
            mem_mib: mem_bytes >> 20,
        });
    }
    let want: u64 = regions.iter().map(|r| r.len).sum();
    let have = file
        .metadata()
        .map_err(|e| MapError::Map(e.to_string()))?
        .len();
    if have != want {
        return Err(MapError::Size { have, want });
    }
    let file = Arc::new(file);
    let mut mapped = Vec::with_capacity(regions.len());
    for region in regions {
        let len = usize::try_from(region.len).map_err(|e| MapError::Map(e.to_string()))?;
        let mapping = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), region.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MapError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(region.guest_addr))
            .ok_or_else(|| MapError::Map("region overflows the address space".into()))?;
        mapped.push(region);
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| MapError::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_written_sparse_maps_back_identical_and_private() {
        let ranges = [
            (GuestAddress(0), 1 << 20),
            (GuestAddress(0x1000_0000), 64 << 10),
        ];
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x2345)).unwrap();
        mem.write_slice(b"world", GuestAddress(0x1000_0000 + 0xfffb))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let file = File::create(&path).unwrap();
        let regions = write_memory(&mem, &file).unwrap();
        assert_eq!(regions[1].file_offset, 1 << 20);
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), (1 << 20) + (64 << 10));
        assert!(meta.blocks() * 512 < 64 << 10, "zero pages must be holes");

        let restored = map_memory(File::open(&path).unwrap(), &regions, &ranges, 1 << 20).unwrap();
        let mut buf = [0u8; 5];
        restored.read_slice(&mut buf, GuestAddress(0x2345)).unwrap();
        assert_eq!(&buf, b"hello");
        restored
            .read_slice(&mut buf, GuestAddress(0x1000_0000 + 0xfffb))
            .unwrap();
        assert_eq!(&buf, b"world");
        // Writes go to private pages, not to the file.
        restored
            .write_slice(b"HELLO", GuestAddress(0x2345))
            .unwrap();
        let again = map_memory(File::open(&path).unwrap(), &regions, &ranges, 1 << 20).unwrap();
        again.read_slice(&mut buf, GuestAddress(0x2345)).unwrap();
        assert_eq!(&buf, b"hello");

        assert!(matches!(
            map_memory(File::open(&path).unwrap(), &regions, &ranges[..1], 1 << 20),
            Err(MapError::Layout { .. })
        ));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert!(matches!(
            map_memory(File::open(&path).unwrap(), &regions, &ranges, 1 << 20),
            Err(MapError::Size { .. })
        ));
    }
}
