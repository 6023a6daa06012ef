//! The event loop's side of the API: requests that reach a running VM are answered here, on
//! the loop thread that owns the devices, so they need no lock.

use std::time::Instant;

use mio::event::Event;

use super::{EventLoop, VmExit};
use crate::api::{ApiHandler, ApiRequest, ApiServer, ClientId, Response, VERSION};
use crate::launch::VmInfo;

/// What the loop knows about the VM for the API.
pub(super) struct Control {
    info: VmInfo,
    started: Instant,
    /// The API server's counters as of the request being served (it is lent out meanwhile).
    api_counts: (u64, u64),
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
    /// Serves the API socket from this loop (registered with its `Poll`).
    pub fn attach_api(&mut self, mut api: ApiServer, info: VmInfo) -> std::io::Result<()> {
        api.register(self.poll.registry())
            .map_err(std::io::Error::other)?;
        self.control = Some(Control {
            info,
            started: Instant::now(),
            api_counts: (0, 0),
        });
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

    fn state_name(&self) -> &'static str {
        "Running"
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
        serde_json::json!({
            "vm": { "state": self.state_name(), "uptime_ms": uptime },
            "exits": {
                "pio": self.stats.pio_exits,
                "mmio": self.stats.mmio_exits,
                "unhandled": self.stats.unhandled.len(),
                "queue_kicks": self.stats.queue_kicks,
            },
            "serial": { "bytes_out": self.devices.serial.bytes_out() },
            "virtio": devices,
            // This request is counted once answered.
            "api": {
                "requests": requests,
                "errors": errors,
            },
        })
    }
}

impl ApiHandler for EventLoop {
    fn handle(&mut self, _client: ClientId, request: ApiRequest) -> Option<Response> {
        let control = self.control.as_ref()?;
        Some(match request {
            ApiRequest::GetInfo => Response::json(&serde_json::json!({
                "id": control.info.id,
                "state": self.state_name(),
                "vmm_version": VERSION,
                "app_name": "Volt",
            })),
            ApiRequest::GetMachineConfig => {
                Response::json(&serde_json::to_value(&control.info.machine).unwrap_or_default())
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
            ApiRequest::Pause | ApiRequest::Resume => {
                Response::error(400, "pause/resume is not available in this build")
            }
            ApiRequest::SnapshotCreate(_) => {
                Response::error(400, "snapshot/create is not available in this build")
            }
        })
    }
}
