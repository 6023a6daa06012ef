//! The control API: HTTP/1.1 with JSON bodies on a Unix socket, using Firecracker's resource
//! names. It is served by the same mio loop that owns the devices (no thread of its own): a
//! small pre-boot loop before `InstanceStart`, then the device event loop.

mod http;
mod model;
mod preboot;
mod server;

pub use http::{parse_request, Method, Parsed, Request, Response, MAX_BODY_BYTES, MAX_HEAD_BYTES};
pub use model::{
    route, ApiRequest, BootSourceBody, CheckedSpec, DriveBody, MachineConfigBody, MemBackend,
    MemBackendError, NetBody, SnapshotCreateBody, SnapshotLoadBody, SpecError, VmSpec,
};
pub use preboot::{not_started, serve_until_start, StartedVm};
pub use server::{ApiHandler, ApiServer, ApiSocketError, ClientId, API_TOKEN_BASE, MAX_CLIENTS};

/// Reported by `GET /`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
