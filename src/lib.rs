//! Volt: a small KVM micro virtual machine monitor.
//!
//! Threads: one worker per vCPU runs `KVM_RUN` and forwards its I/O exits over a channel to the
//! single-threaded event loop ([`event_loop`]), which owns every device.

pub mod api;
pub mod boot;
pub mod cli;
pub mod clock;
pub mod device_manager;
pub mod error;
pub mod event_loop;
pub mod fast_path;
pub mod kernel_store;
pub mod launch;
pub mod optional_devices;
pub mod pause;
pub mod sandbox;
pub mod snapshot;
pub mod terminal;
pub mod thread_report;
pub mod vcpu;
pub mod vm;
pub mod vsock;
