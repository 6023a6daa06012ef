//! Snapshots: the state of a paused VM (vCPUs, interrupt controllers, clock, devices) in a
//! versioned, checksummed state file, plus a guest-memory file restored by mapping it.

pub mod vcpu_state;
