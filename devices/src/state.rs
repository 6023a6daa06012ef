//! Saving and restoring a device's guest-visible state, for VM snapshots. Each device has a
//! plain, serializable state type; restoring checks it, since a snapshot file is input.

use thiserror::Error;

/// A device whose guest-visible state can be saved and restored.
pub trait Persist {
    /// The saved state (serializable by the VMM).
    type State;
    /// The state now. The VM is paused: no access is in flight.
    fn save(&self) -> Self::State;
    /// Puts the device into `state`; refuses a state the device could not have been in.
    fn restore(&mut self, state: &Self::State) -> Result<(), StateError>;
}

/// Why a saved state cannot be restored.
#[derive(Debug, Error)]
#[error("{device}: {problem}")]
pub struct StateError {
    /// Which device refused.
    pub device: &'static str,
    /// What is wrong with the state.
    pub problem: String,
}

impl StateError {
    /// A refusal by `device`.
    pub fn new(device: &'static str, problem: impl Into<String>) -> Self {
        StateError {
            device,
            problem: problem.into(),
        }
    }
}
