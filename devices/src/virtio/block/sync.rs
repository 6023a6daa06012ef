//! The synchronous engine: each request runs to completion on the event-loop thread with
//! preadv/pwritev straight into guest memory (the fallback when io_uring is unavailable).

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

use super::request::{IoOp, IoRequest};

/// Runs `request` on `file`; `Err` carries the OS error for the log.
pub(super) fn execute(file: &File, request: &mut IoRequest) -> io::Result<()> {
    match request.op {
        IoOp::Flush => file.sync_data(),
        IoOp::Read { offset } => transfer(file, &mut request.iovecs.0, offset, false),
        IoOp::Write { offset } => transfer(file, &mut request.iovecs.0, offset, true),
    }
}

/// preadv/pwritev until every iovec is done; a read that hits the end of the file is an error
/// (the request was checked against the disk size, so the file shrank under us).
fn transfer(
    file: &File,
    iovecs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    let mut first = 0;
    while first < iovecs.len() {
        let rest = &iovecs[first..];
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // rest.len() <= MAX_IOVECS (1024), so it fits c_int.
        let count = rest.len() as libc::c_int;
        // SAFETY: the iovecs point into guest memory that the parser checked (every byte lies
        // in a mapped region that outlives the device); the kernel reads or writes exactly
        // those buffers. The fd is our open disk image.
        let done = unsafe {
            if write {
                libc::pwritev(file.as_raw_fd(), rest.as_ptr(), count, off)
            } else {
                libc::preadv(file.as_raw_fd(), rest.as_ptr(), count, off)
            }
        };
        if done < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if done == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short transfer: the image ends before the request",
            ));
        }
        let mut done = done as usize;
        offset += done as u64;
        // Skip the iovecs that are complete and trim the one that is partly done.
        while done > 0 {
            let iov = &mut iovecs[first];
            if done >= iov.iov_len {
                done -= iov.iov_len;
                first += 1;
            } else {
                // SAFETY: done < iov_len, so the new base stays inside the same buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(done).cast() };
                iov.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}
