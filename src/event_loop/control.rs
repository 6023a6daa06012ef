//! The event loop's side of the API: requests that reach a running VM are answered here, on
//! the loop thread that owns the devices, so they need no lock. Pausing is asynchronous: the
//! answer to `PATCH /vm {"state":"Paused"}` goes out once every vCPU has parked, while the
//! loop goes on serving exits and the API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_clock_data;
use kvm_ioctls::VmFd;
use mio::event::Event;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{EventLoop, VmExit};
use crate::api::{
    ApiHandler, ApiRequest, ApiServer, ClientId, Response, SnapshotCreateBody, VERSION,
};
use crate::launch::VmInfo;
use crate::pause::PauseControl;
use crate::snapshot::{
    self, MachineLayout, SnapshotError, SnapshotSizes, VirtioBackend, VmSnapshot,
};
use devices::{BusDevice, DeviceCounters};

/// Where a virtio-mmio device's configuration space starts in its window.
const VIRTIO_MMIO_CONFIG_OFFSET: u64 = 0x100;

/// A lost kick is repeated this often while the vCPUs are being paused.
const PAUSE_KICK_INTERVAL: Duration = Duration::from_millis(5);
/// A pause that has not completed by then is abandoned with an error.
const PAUSE_DEADLINE: Duration = Duration::from_secs(5);

/// Where the guest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunState {
    Running,
    /// Kicked, waiting for every vCPU to park; `waiter` gets the answer.
    Pausing {
        waiter: Option<ClientId>,
        since: Instant,
    },
    Paused,
}

/// What the loop knows and holds to control the VM.
pub(super) struct Control {
    info: Option<VmInfo>,
    started: Instant,
    /// The API server's counters as of the request being served (it is lent out meanwhile).
    api_counts: (u64, u64),
    pub(super) pause: PauseControl,
    pub(super) vm_fd: Arc<VmFd>,
    pub(super) memory: GuestMemoryMmap,
    layout: MachineLayout,
    pub(super) state: RunState,
    /// The KVM clock when the guest was paused: restored on resume so it does not jump.
    clock: Option<kvm_clock_data>,
}

/// A device's requests, bytes, errors and drops as a JSON object.
fn counters_json(counters: &DeviceCounters) -> serde_json::Value {
    counters
        .fields()
        .iter()
        .map(|&(name, value)| (name.to_string(), serde_json::Value::from(value)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn virtio_type_name(device_type: u32) -> &'static str {
    match device_type {
        1 => "net",
        2 => "block",
        3 => "console",
        4 => "rng",
        5 => "balloon",
        19 => "vsock",
        _ => "other",
    }
}

impl EventLoop {
    /// Gives the loop what it needs to pause the vCPUs and read the VM's state.
    pub fn attach_vm_control(
        &mut self,
        pause: PauseControl,
        vm_fd: Arc<VmFd>,
        memory: GuestMemoryMmap,
        layout: MachineLayout,
    ) {
        self.control = Some(Control {
            info: None,
            started: Instant::now(),
            api_counts: (0, 0),
            pause,
            vm_fd,
            memory,
            layout,
            state: RunState::Running,
            clock: None,
        });
    }

    /// The guest starts paused (a restored snapshot without `resume_vm`): the vCPU threads
    /// park before they first enter the guest.
    pub fn start_paused(&mut self) {
        if let Some(control) = self.control.as_mut() {
            control.state = RunState::Pausing {
                waiter: None,
                since: Instant::now(),
            };
            control.pause.request();
        }
    }

    /// Serves the API socket from this loop (registered with its `Poll`).
    pub fn attach_api(&mut self, mut api: ApiServer, info: VmInfo) -> std::io::Result<()> {
        api.register(self.poll.registry())
            .map_err(std::io::Error::other)?;
        if let Some(control) = self.control.as_mut() {
            control.info = Some(info);
        }
        self.api = Some(api);
        Ok(())
    }

    pub(super) fn handle_api_event(&mut self, event: &Event) -> Option<VmExit> {
        let mut api = self.api.take()?;
        if let Some(control) = self.control.as_mut() {
            control.api_counts = (api.requests, api.errors);
        }
        api.handle_event(event, self);
        self.api = Some(api);
        None
    }

    /// Sends the answer to a request that waited (a pause).
    fn answer_later(&mut self, client: Option<ClientId>, response: Response) {
        let Some(client) = client else {
            return;
        };
        let Some(mut api) = self.api.take() else {
            return;
        };
        api.respond(client, response, self);
        self.api = Some(api);
    }

    /// How long the loop may sleep in `poll`: not long while kicks may need repeating.
    pub(super) fn control_poll_timeout(&self) -> Option<Duration> {
        match self.control.as_ref()?.state {
            RunState::Pausing { .. } => Some(PAUSE_KICK_INTERVAL),
            _ => None,
        }
    }

    /// Once per loop iteration: repeats lost kicks, abandons a pause that does not complete.
    pub(super) fn control_tick(&mut self) {
        let Some(control) = self.control.as_mut() else {
            return;
        };
        if let RunState::Pausing { waiter, since } = control.state {
            if since.elapsed() < PAUSE_DEADLINE {
                control.pause.kick_unparked();
                return;
            }
            control.pause.resume();
            control.state = RunState::Running;
            let message = "the vCPUs did not pause within 5 s; the VM keeps running";
            log::warn!("{message}");
            self.answer_later(waiter, Response::error(500, message));
        }
    }

    /// A vCPU reported it is parked.
    pub(super) fn vcpu_parked(&mut self, vcpu: usize) {
        let Some(control) = self.control.as_mut() else {
            return;
        };
        if control.state == RunState::Running {
            // It saw a pause that was given up (resumed early): let it go on.
            control.pause.resume_one(vcpu);
            return;
        }
        if !control.pause.parked(vcpu) {
            return;
        }
        let RunState::Pausing { waiter, .. } = control.state else {
            return;
        };
        match control.vm_fd.get_clock() {
            Ok(clock) => control.clock = Some(clock),
            Err(e) => log::warn!("KVM_GET_CLOCK failed; the guest clock will jump: {e}"),
        }
        control.state = RunState::Paused;
        self.flush_console();
        self.answer_later(waiter, Response::no_content());
    }

    fn pause(&mut self, client: ClientId) -> Option<Response> {
        let control = self.control.as_mut()?;
        match control.state {
            RunState::Running => {
                control.state = RunState::Pausing {
                    waiter: Some(client),
                    since: Instant::now(),
                };
                control.pause.request();
                None
            }
            RunState::Pausing { .. } => Some(Response::error(400, "a pause is in progress")),
            RunState::Paused => Some(Response::error(400, "the VM is already paused")),
        }
    }

    fn resume(&mut self) -> Response {
        let Some(control) = self.control.as_mut() else {
            return Response::error(500, "no VM control");
        };
        match control.state {
            RunState::Paused => {}
            RunState::Pausing { waiter, .. } => {
                // Resumed before every vCPU parked (e.g. right after a paused restore): the
                // pause is given up; late parkers are let go as they report.
                control.pause.resume();
                control.state = RunState::Running;
                self.answer_later(
                    waiter,
                    Response::error(400, "resumed before the pause completed"),
                );
                return Response::no_content();
            }
            RunState::Running => return Response::error(400, "the VM is not paused"),
        }
        if let Some(mut clock) = control.clock.take() {
            // Only the clock value: the guest continues where it paused.
            clock.flags = 0;
            if let Err(e) = control.vm_fd.set_clock(&clock) {
                log::warn!("KVM_SET_CLOCK failed; the guest clock may jump: {e}");
            }
        }
        control.pause.resume();
        control.state = RunState::Running;
        Response::no_content()
    }

    /// `PUT /snapshot/create`: the VM must be paused.
    fn snapshot_create(&mut self, body: SnapshotCreateBody) -> Response {
        if let Some(kind) = body.snapshot_type.as_deref().filter(|k| *k != "Full") {
            return Response::error(
                400,
                format!("snapshot_type {kind} is not supported (only Full)"),
            );
        }
        let started = Instant::now();
        match self.write_snapshot(&body) {
            Ok(sizes) => {
                log::info!(
                    "snapshot {} ({} bytes) + {} ({} bytes, {} allocated) written in {} ms",
                    body.snapshot_path.display(),
                    sizes.state_bytes,
                    body.mem_file_path.display(),
                    sizes.memory_bytes,
                    sizes.memory_allocated,
                    started.elapsed().as_millis()
                );
                Response::no_content()
            }
            Err(e @ (SnapshotError::NotPaused | SnapshotError::Path(_) | SnapshotError::Vsock)) => {
                Response::error(400, e.to_string())
            }
            Err(e) => Response::error(400, format!("snapshot failed: {e}")),
        }
    }

    fn write_snapshot(
        &mut self,
        body: &SnapshotCreateBody,
    ) -> Result<SnapshotSizes, SnapshotError> {
        let control = self.control.as_ref().ok_or(SnapshotError::NotPaused)?;
        if control.state != RunState::Paused {
            return Err(SnapshotError::NotPaused);
        }
        if control.layout.vsock {
            return Err(SnapshotError::Vsock);
        }
        let vcpus = control
            .pause
            .save_all(Duration::from_secs(2))
            .map_err(SnapshotError::Vcpus)?;
        let clock = match control.clock {
            Some(clock) => clock,
            None => control
                .vm_fd
                .get_clock()
                .map_err(|source| SnapshotError::Kvm {
                    what: "KVM_GET_CLOCK",
                    source,
                })?,
        };
        let vm = snapshot::save_vm_state(&control.vm_fd, clock)?;
        let mut machine = control.layout.clone();
        // A card whose MAC was chosen at random keeps it: read it from the config space.
        for (backend, slot) in machine
            .backends
            .iter_mut()
            .zip(self.devices.virtio.iter_mut())
        {
            if let VirtioBackend::Net {
                mac: mac @ None, ..
            } = backend
            {
                let mut bytes = [0u8; 6];
                for (i, byte) in bytes.iter_mut().enumerate() {
                    let mut one = [0u8];
                    slot.transport
                        .read(VIRTIO_MMIO_CONFIG_OFFSET + i as u64, &mut one);
                    *byte = one[0];
                }
                *mac = Some(bytes);
            }
        }
        snapshot::quiesce_devices(&mut self.devices);
        let devices = snapshot::save_devices(&self.devices);
        let control = self.control.as_ref().ok_or(SnapshotError::NotPaused)?;
        let state = VmSnapshot {
            volt_version: snapshot::VOLT_VERSION.to_string(),
            machine,
            memory: Vec::new(),
            vcpus,
            vm,
            devices,
        };
        snapshot::write_snapshot(
            state,
            &control.memory,
            &body.snapshot_path,
            &body.mem_file_path,
        )
    }

    fn state_name(&self) -> &'static str {
        match self.control.as_ref().map(|c| c.state) {
            // A restored VM waiting to be resumed has not run yet either.
            Some(RunState::Paused) | Some(RunState::Pausing { waiter: None, .. }) => "Paused",
            _ => "Running",
        }
    }

    fn metrics(&self) -> serde_json::Value {
        let devices: Vec<serde_json::Value> = self
            .devices
            .virtio
            .iter()
            .map(|slot| {
                let mut device = serde_json::json!({
                    "type": virtio_type_name(slot.transport.device_type()),
                    "mmio_base": format!("{:#x}", slot.base),
                    "irq": slot.irq,
                    "status": slot.transport.status(),
                    "transport": counters_json(&slot.transport.counters()),
                });
                if let Some(counters) = slot.transport.device_counters() {
                    device["device"] = counters_json(&counters);
                }
                device
            })
            .collect();
        let (uptime, (requests, errors)) = self.control.as_ref().map_or((0, (0, 0)), |c| {
            (
                u64::try_from(c.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                c.api_counts,
            )
        });
        let memory: u64 = self
            .control
            .as_ref()
            .map_or(0, |c| c.memory.iter().map(|region| region.len()).sum());
        serde_json::json!({
            "vm": { "state": self.state_name(), "uptime_ms": uptime, "memory_bytes": memory },
            "exits": {
                "pio": self.stats.pio_exits,
                "pio_answered_on_vcpu": self.stats.pio_answered_on_vcpu,
                "mmio": self.stats.mmio_exits,
                "unhandled": self.stats.unhandled.len(),
                "queue_kicks": self.stats.queue_kicks,
            },
            "serial": {
                "bytes_out": self.devices.serial.bytes_out(),
                "counters": counters_json(&self.devices.serial.counters()),
            },
            "console_dropped": self.stats.console_dropped,
            "i8042": counters_json(&self.devices.i8042.counters()),
            "virtio": devices,
            // This request is counted once answered.
            "api": { "requests": requests, "errors": errors },
        })
    }
}

impl ApiHandler for EventLoop {
    fn handle(&mut self, client: ClientId, request: ApiRequest) -> Option<Response> {
        let Some(info) = self.control.as_ref().and_then(|c| c.info.clone()) else {
            return Some(Response::error(500, "the VM control is not attached"));
        };
        Some(match request {
            ApiRequest::GetInfo => Response::json(&serde_json::json!({
                "id": info.id,
                "state": self.state_name(),
                "vmm_version": VERSION,
                "app_name": "Volt",
            })),
            ApiRequest::GetMachineConfig => {
                Response::json(&serde_json::to_value(&info.machine).unwrap_or_default())
            }
            ApiRequest::GetMetrics => Response::json(&self.metrics()),
            ApiRequest::FlushMetrics => Response::no_content(),
            ApiRequest::PutBootSource(_)
            | ApiRequest::PutMachineConfig(_)
            | ApiRequest::PutDrive(_)
            | ApiRequest::PutNet(_) => Response::error(
                400,
                "the VM is already running: this can only be set before InstanceStart",
            ),
            ApiRequest::InstanceStart => Response::error(400, "the VM is already running"),
            ApiRequest::SnapshotLoad(_) => Response::error(
                400,
                "snapshot/load needs a fresh Volt process (the VM is already running)",
            ),
            ApiRequest::SendCtrlAltDel => {
                self.devices.i8042.send_ctrl_alt_del();
                Response::no_content()
            }
            ApiRequest::Pause => return self.pause(client),
            ApiRequest::Resume => self.resume(),
            ApiRequest::SnapshotCreate(body) => self.snapshot_create(body),
        })
    }
}
