//! Before `InstanceStart` there is no VM: this small loop, on the main thread and in the same
//! mio style as the device loop, serves the API until a VM is built. The built VM and the API
//! socket (with its connected clients) are then handed over to the device event loop.

use std::io;

use mio::{Events, Poll};

use super::http::Response;
use super::model::{ApiRequest, CheckedSpec, SnapshotLoadBody, SpecError, VmSpec};
use super::server::{ApiHandler, ApiServer, ClientId};
use super::VERSION;
use crate::launch::{restore_config, vm_config, LaunchOptions};
use crate::snapshot;
use crate::vm::Vm;

/// A VM the API asked for, built and ready to start.
pub struct StartedVm {
    pub vm: Vm,
    pub spec: CheckedSpec,
}

struct PreBoot<'a> {
    spec: VmSpec,
    options: &'a LaunchOptions,
    started: Option<StartedVm>,
}

impl PreBoot<'_> {
    fn start(&mut self) -> Response {
        let spec = match self.spec.check() {
            Ok(spec) => spec,
            Err(e) => return Response::error(400, format!("cannot start: {e}")),
        };
        let config = match vm_config(&spec, self.options) {
            Ok(config) => config,
            Err(e) => return Response::error(400, format!("cannot start: {e}")),
        };
        match Vm::build(config) {
            Ok(vm) => {
                self.started = Some(StartedVm { vm, spec });
                Response::no_content()
            }
            Err(e) => Response::error(400, format!("cannot start: {e}")),
        }
    }
}

impl PreBoot<'_> {
    fn load_snapshot(&mut self, body: &SnapshotLoadBody) -> Response {
        if self.spec != VmSpec::default() {
            return Response::error(
                400,
                "snapshot/load describes the whole VM: it cannot follow other configuration",
            );
        }
        if body.enable_diff_snapshots {
            return Response::error(400, "diff snapshots are not supported");
        }
        let started = std::time::Instant::now();
        let mem_path = match body.mem_path() {
            Ok(path) => path,
            Err(e) => return Response::error(400, e.to_string()),
        };
        let restore = match snapshot::load(&body.snapshot_path, &mem_path, body.resume_vm) {
            Ok(restore) => restore,
            Err(e) => return Response::error(400, e.to_string()),
        };
        let (config, spec) = restore_config(restore, self.options);
        match Vm::build(config) {
            Ok(vm) => {
                log::info!(
                    "snapshot {} restored in {} us",
                    body.snapshot_path.display(),
                    started.elapsed().as_micros()
                );
                self.started = Some(StartedVm { vm, spec });
                Response::no_content()
            }
            Err(e) => Response::error(400, format!("cannot restore: {e}")),
        }
    }
}

fn put(result: Result<(), SpecError>) -> Response {
    match result {
        Ok(()) => Response::no_content(),
        Err(e) => Response::error(400, e.to_string()),
    }
}

/// The answer to a request that only makes sense once the guest runs.
pub fn not_started(what: &str) -> Response {
    Response::error(400, format!("{what}: the VM is not started yet"))
}

impl ApiHandler for PreBoot<'_> {
    fn handle(&mut self, _client: ClientId, request: ApiRequest) -> Option<Response> {
        if self.started.is_some() {
            // Requests pipelined behind InstanceStart are served by the device loop's handler
            // only once it runs; answer them here as a running VM would refuse set-up.
            return Some(Response::error(400, "the VM is starting"));
        }
        Some(match request {
            ApiRequest::GetInfo => Response::json(&serde_json::json!({
                "id": "volt",
                "state": "Not started",
                "vmm_version": VERSION,
                "app_name": "Volt",
            })),
            ApiRequest::GetMachineConfig => {
                Response::json(&serde_json::to_value(&self.spec.machine_config).unwrap_or_default())
            }
            ApiRequest::GetMetrics => Response::json(&serde_json::json!({
                "vm": { "state": "Not started" },
            })),
            ApiRequest::PutBootSource(body) => {
                self.spec.boot_source = Some(body);
                Response::no_content()
            }
            ApiRequest::PutMachineConfig(body) => put(self.spec.put_machine_config(body)),
            ApiRequest::PutDrive(body) => put(self.spec.put_drive(body)),
            ApiRequest::PutNet(body) => put(self.spec.put_net(body)),
            ApiRequest::InstanceStart => self.start(),
            ApiRequest::FlushMetrics => Response::no_content(),
            ApiRequest::SendCtrlAltDel => not_started("SendCtrlAltDel"),
            ApiRequest::Pause | ApiRequest::Resume => not_started("PATCH /vm"),
            ApiRequest::SnapshotCreate(_) => not_started("snapshot/create"),
            ApiRequest::SnapshotLoad(body) => self.load_snapshot(&body),
        })
    }
}

/// Serves the API until a VM has been built by `InstanceStart`.
pub fn serve_until_start(
    api: &mut ApiServer,
    options: &LaunchOptions,
) -> Result<StartedVm, io::Error> {
    let mut poll = Poll::new()?;
    api.register(poll.registry()).map_err(io::Error::other)?;
    let mut handler = PreBoot {
        spec: VmSpec::default(),
        options,
        started: None,
    };
    let mut events = Events::with_capacity(32);
    log::info!("API: waiting for requests on {}", api.path().display());
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if ApiServer::owns(event.token()) {
                api.handle_event(event, &mut handler);
            }
        }
        if let Some(started) = handler.started.take() {
            return Ok(started);
        }
    }
}
