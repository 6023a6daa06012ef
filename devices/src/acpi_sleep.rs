//! The ACPI hardware-reduced sleep registers (ACPI 6.5, 4.8.3.7/4.8.3.8): how a guest powers
//! the machine off.
//!
//! The FADT's `SLEEP_CONTROL_REG` and `SLEEP_STATUS_REG` point at two byte-wide ports here.
//! Linux's `poweroff` evaluates `\_S5` from the DSDT ([`S5_SLEEP_TYPE`]) and writes
//! `SLP_TYP << 2 | SLP_EN` to the control register; this device then records a power-off request
//! that the VMM's event loop turns into the end of the VM. The status register reads 0: the
//! machine never wakes (`WAK_STS` stays clear), so the guest waits there until it is stopped.
//!
//! Sleep types other than S5 are not advertised; a write of one is ignored (logged a few times).

use crate::BusDevice;

/// The control register is port `SLEEP_PORT_BASE`, the status register the port after it.
pub const SLEEP_PORT_BASE: u16 = 0x600;
pub const SLEEP_PORT_COUNT: u16 = 2;
/// Offsets of the two registers inside the port window.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// The SLP_TYP value the DSDT's `\_S5` package announces for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// SLEEP_CONTROL_REG: SLP_EN (bit 5) starts the transition to SLP_TYP (bits 4:2).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
/// Ignored writes logged at most this many times (the guest controls how often it writes).
const MAX_LOGGED: u32 = 4;

#[derive(Debug, Default)]
pub struct AcpiSleep {
    power_off: bool,
    logged: u32,
}

impl AcpiSleep {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the guest asked for S5 (soft-off); cleared by the call.
    pub fn take_power_off(&mut self) -> bool {
        std::mem::take(&mut self.power_off)
    }

    fn ignored(&mut self, what: &str, value: u8) {
        if self.logged < MAX_LOGGED {
            self.logged += 1;
            log::warn!("ACPI sleep register: ignored {what} {value:#04x}");
        }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Control reads back as 0; status never shows WAK_STS.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    self.power_off = true;
                } else {
                    self.ignored("sleep type", sleep_type);
                }
            }
            // Setting SLP_TYP without SLP_EN does nothing yet.
            SLEEP_CONTROL_OFFSET => {}
            // Write-1-to-clear of WAK_STS, which is never set.
            SLEEP_STATUS_OFFSET => {}
            _ => self.ignored("write at offset", u8::try_from(offset).unwrap_or(u8::MAX)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Linux's acpi_hw_extended_sleep() writes for sleep type `typ`.
    fn linux_sleep_write(typ: u8) -> u8 {
        ((typ << 2) & 0x1c) | 0x20
    }

    #[test]
    fn s5_with_slp_en_requests_power_off_once() {
        let mut dev = AcpiSleep::new();
        assert!(!dev.take_power_off());
        // Linux first clears WAK_STS, then writes the control register.
        dev.write(SLEEP_STATUS_OFFSET, &[0x80]);
        assert!(!dev.take_power_off());
        dev.write(SLEEP_CONTROL_OFFSET, &[linux_sleep_write(S5_SLEEP_TYPE)]);
        assert!(dev.take_power_off());
        assert!(!dev.take_power_off(), "the request is taken once");
    }

    #[test]
    fn other_sleep_types_and_missing_slp_en_are_ignored() {
        let mut dev = AcpiSleep::new();
        for typ in [0u8, 1, 3, 4, 6, 7] {
            dev.write(SLEEP_CONTROL_OFFSET, &[linux_sleep_write(typ)]);
            assert!(!dev.take_power_off(), "sleep type {typ}");
        }
        // S5 without SLP_EN: only the type is latched on hardware, nothing happens.
        dev.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << 2]);
        assert!(!dev.take_power_off());
        // Outside the two registers, and empty writes.
        dev.write(2, &[0xff]);
        dev.write(SLEEP_CONTROL_OFFSET, &[]);
        assert!(!dev.take_power_off());
        assert_eq!(dev.logged, MAX_LOGGED, "guest-triggered logging is bounded");
    }

    #[test]
    fn status_never_reports_a_wake() {
        let mut dev = AcpiSleep::new();
        dev.write(SLEEP_CONTROL_OFFSET, &[linux_sleep_write(S5_SLEEP_TYPE)]);
        for offset in [SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET] {
            let mut data = [0xffu8; 1];
            dev.read(offset, &mut data);
            assert_eq!(data, [0]);
        }
        // A wider access (e.g. a 16-bit read over both ports) is zero too.
        let mut wide = [0xffu8; 2];
        dev.read(SLEEP_CONTROL_OFFSET, &mut wide);
        assert_eq!(wide, [0, 0]);
    }
}
