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
use crate::api::{ApiHandler, ApiRequest, ApiServer, ClientId, Response, VERSION};
use crate::launch::VmInfo;
use crate::pause::PauseControl;

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
    pub(super) state: RunState,
    /// The KVM clock when the guest was paused: restored on resume so it does not jump.
    clock: Option<kvm_clock_data>,
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
    ) {
        self.control = Some(Control {
            info: None,
            started: Instant::now(),
            api_counts: (0, 0),
            pause,
            vm_fd,
            memory,
            state: RunState::Running,
            clock: None,
        });
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
        let (Some(client), Some(mut api)) = (client, self.api.take()) else {
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
        if control.state != RunState::Paused {
            return Response::error(400, "the VM is not paused");
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

    fn state_name(&self) -> &'static str {
        match self.control.as_ref().map(|c| c.state) {
            Some(RunState::Paused) => "Paused",
            _ => "Running",
        }
    }

    fn metrics(&self) -> serde_json::Value {
        let devices: Vec<serde_json::Value> = self
            .devices
            .virtio
            .iter()
            .map(|slot| {
                let counters = slot.transport.counters();
                serde_json::json!({
                    "type": virtio_type_name(slot.transport.device_type()),
                    "mmio_base": format!("{:#x}", slot.base),
                    "irq": slot.irq,
                    "status": slot.transport.status(),
                    "queue_notifications": counters.queue_notifications,
                    "interrupts": counters.interrupts,
                })
            })
            .collect();
        let (uptime, (requests, errors)) = self.control.as_ref().map_or((0, (0, 0)), |c| {
            (c.started.elapsed().as_millis() as u64, c.api_counts)
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
            "serial": { "bytes_out": self.devices.serial.bytes_out() },
            "virtio": devices,
            // This request is counted once answered.
            "api": { "requests": requests, "errors": errors },
        })
    }
}

impl ApiHandler for EventLoop {
    fn handle(&mut self, client: ClientId, request: ApiRequest) -> Option<Response> {
        let control = self.control.as_ref()?;
        let info = control.info.clone()?;
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
            ApiRequest::SnapshotCreate(_) => {
                Response::error(400, "snapshot/create is not available in this build")
            }
        })
    }
}
