//! What a vCPU thread may answer by itself, without a round trip to the event loop.
//!
//! The loop owns every device and stays the only one that changes device state. After each
//! access to the UART it publishes the line status register here when reading it has no side
//! effect and no posted write can change it (see `SerialConsole::stable_line_status`). A vCPU
//! that exits on an LSR read answers from this value: Linux's console driver reads the LSR
//! before every byte it writes, so each console byte costs one posted write instead of a posted
//! write plus a blocking read. Every other UART register access still goes to the loop, and
//! writes to UART registers other than the data register wait for the loop, so the published
//! value is never older than the guest's last change of UART mode.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// "The published value is valid" flag above the 8-bit register value.
const VALID: u16 = 0x100;

/// The published line status register, shared by the loop (writer) and the vCPU threads.
#[derive(Clone, Debug, Default)]
pub struct LineStatusMirror(Arc<AtomicU16>);

impl LineStatusMirror {
    /// Called by the loop after every UART access, before it answers the vCPU.
    pub fn publish(&self, line_status: Option<u8>) {
        let word = line_status.map_or(0, |lsr| VALID | u16::from(lsr));
        self.0.store(word, Ordering::Release);
    }

    /// The value a vCPU may return for an LSR read, if there is one.
    pub fn get(&self) -> Option<u8> {
        let word = self.0.load(Ordering::Acquire);
        (word & VALID != 0).then_some((word & 0xff) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_answered_until_the_loop_published_a_value() {
        let mirror = LineStatusMirror::default();
        assert_eq!(mirror.get(), None);
        mirror.publish(Some(0x60));
        assert_eq!(mirror.clone().get(), Some(0x60));
        mirror.publish(Some(0));
        assert_eq!(mirror.get(), Some(0), "a zero register is still a value");
        mirror.publish(None);
        assert_eq!(mirror.get(), None);
    }
}
