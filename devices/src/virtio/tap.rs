//! Opening an existing host tap interface for virtio-net.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use thiserror::Error;

/// Size of `struct virtio_net_hdr_v1`, the header virtio 1.x drivers put before each frame.
pub const VNET_HDR_LEN: usize = 12;
/// IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// Why a tap interface could not be used.
#[derive(Debug, Error)]
pub enum TapError {
    /// The name cannot be a Linux interface name.
    #[error(
        "invalid tap interface name {0:?}: must be 1-15 bytes without '/', ':', whitespace or NUL"
    )]
    InvalidName(String),
    /// No interface of that name exists (Volt does not create taps itself).
    #[error("tap interface {name} does not exist; create it first with `ip tuntap add dev {name} mode tap && ip link set {name} up`")]
    NotFound {
        /// The interface name.
        name: String,
    },
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    /// TUNSETIFF failed: not a tap, busy, or no permission.
    #[error("cannot attach to tap interface {name}: {source} (is it a tap device, not already in use, and do you have CAP_NET_ADMIN or own it?)")]
    Attach {
        /// The interface name.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// The tap does not support virtio-net headers of the size virtio 1.x needs.
    #[error("cannot set the virtio-net header size on tap {name}: {source}")]
    VnetHeader {
        /// The interface name.
        name: String,
        /// The OS error.
        source: io::Error,
    },
}

/// `struct ifreq` as far as TUNSETIFF uses it: the name and the flags of the union.
#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A non-blocking file descriptor attached to a host tap interface with virtio-net headers.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing tap interface `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
    /// 12-byte virtio_net_hdr_v1 headers, non-blocking).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty()
            || name.len() > MAX_IFNAME_LEN
            || name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(TapError::InvalidName(name.to_string()));
        }
        // TUNSETIFF would silently create a missing tap when run as root; refuse instead so a
        // typo does not produce a VM attached to nothing.
        if !Path::new("/sys/class/net").join(name).exists() {
            return Err(TapError::NotFound {
                name: name.to_string(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;

        let base_flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        // A tap created with `multi_queue` only accepts IFF_MULTI_QUEUE attaches (EINVAL
        // otherwise), so retry with it.
        let attach = set_iff(&file, name, base_flags).or_else(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                set_iff(&file, name, base_flags | libc::IFF_MULTI_QUEUE)
            } else {
                Err(e)
            }
        });
        attach.map_err(|source| TapError::Attach {
            name: name.to_string(),
            source,
        })?;

        #[allow(clippy::cast_possible_truncation)] // the constant 12 fits in any c_int
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int from the pointer, which is valid.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(TapError::VnetHeader {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// A `Tap` over any open file that keeps frame boundaries, such as one end of a
    /// non-blocking `SOCK_SEQPACKET` socketpair: the backend tests and fuzzers use to run
    /// virtio-net without `/dev/net/tun`. Frames carry the same 12-byte virtio-net header;
    /// [`Tap::set_offload`] fails on such a file, which virtio-net logs and ignores.
    pub fn from_file(file: File, name: &str) -> Tap {
        Tap {
            file,
            name: name.to_string(),
        }
    }

    /// A `Tap` named `name` on one end of a new non-blocking `SOCK_SEQPACKET` socketpair
    /// (see [`Tap::from_file`]), and the other end, where the host side's frames go in and out.
    pub fn socketpair(name: &str) -> io::Result<(Tap, File)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the valid 2-element array.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds are fresh and owned by nobody else.
        let (device, host) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Tap::from_file(File::from(device), name), File::from(host)))
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads (TUN_F_*) the guest can take in received frames.
    pub fn set_offload(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame (virtio-net header + Ethernet frame); `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (virtio-net header + Ethernet frame).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn set_iff(file: &File, name: &str, flags: libc::c_int) -> io::Result<()> {
    // ifr_flags is a short; every IFF_* flag used here is below 0x8000.
    let flags = libc::c_short::try_from(flags)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut ifr = IfReqFlags {
        name: [0; 16],
        flags,
        _pad: [0; 22],
    };
    ifr.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: ifr is a properly sized, initialised struct ifreq prefix that outlives the call;
    // TUNSETIFF reads and writes only within it.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
