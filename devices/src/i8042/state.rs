//! Save/restore of the i8042 controller.

use serde::{Deserialize, Serialize};

use super::{OutputBuffer, I8042, OUTPUT_BUFFER_SIZE};
use crate::state::{Persist, StateError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042Snapshot {
    pub control: u8,
    pub pending: Option<u8>,
    pub output: Vec<u8>,
    pub key_bytes: usize,
}

impl Persist for I8042 {
    type State = I8042Snapshot;

    fn save(&self) -> I8042Snapshot {
        I8042Snapshot {
            control: self.control,
            pending: self.pending,
            output: (0..self.output.len)
                .map(|i| self.output.bytes[(self.output.head + i) % OUTPUT_BUFFER_SIZE])
                .collect(),
            key_bytes: self.key_bytes,
        }
    }

    fn restore(&mut self, state: &I8042Snapshot) -> Result<(), StateError> {
        if state.output.len() > OUTPUT_BUFFER_SIZE || state.key_bytes > state.output.len() {
            return Err(StateError::new(
                "i8042",
                format!(
                    "{} output bytes ({} of them key presses): not a state the controller can be in",
                    state.output.len(),
                    state.key_bytes
                ),
            ));
        }
        self.control = state.control;
        self.pending = state.pending;
        self.output = OutputBuffer::default();
        for &byte in &state.output {
            self.output.push(byte);
        }
        self.key_bytes = state.key_bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusDevice;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn control_register_and_output_survive_a_round_trip() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut i8042 = I8042::new(evt.try_clone().unwrap());
        i8042.write(4, &[0x60]); // write CTR
        i8042.write(0, &[0x47]);
        i8042.write(4, &[0x20]); // read CTR: one byte waiting
        let saved = i8042.save();
        let mut restored = I8042::new(evt);
        restored.restore(&saved).unwrap();
        let mut byte = [0u8];
        restored.read(0, &mut byte);
        assert_eq!(byte[0], 0x47);
        let mut bad = saved;
        bad.output = vec![0; 1000];
        assert!(restored.restore(&bad).is_err());
    }
}
