//! How many vCPUs a VM has, checked once where the number enters Volt (`--cpus`, the API's
//! `machine-config`, a config file, a snapshot) and carried as [`VcpuCount`] from there on, so
//! the MP table, the MADT, CPUID and the vCPU threads never see a count they cannot describe.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most vCPUs Volt supports. vCPU `i` has APIC id `i` and the I/O APIC takes the id after
/// the last vCPU, which must stay below 255 (the broadcast id).
pub const MAX_VCPUS: u8 = 254;

/// A vCPU count in `1..=MAX_VCPUS`. Serialized as a plain number; deserializing checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u8")]
pub struct VcpuCount(u8);

/// The one refusal of a bad vCPU count, whichever way it came in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VcpuCountError {
    #[error("the vCPU count must be 1 to {MAX_VCPUS}, not {0}")]
    OutOfRange(u64),
    #[error("the vCPU count must be a number from 1 to {MAX_VCPUS}, not '{0}'")]
    NotANumber(String),
}

impl VcpuCount {
    pub const ONE: VcpuCount = VcpuCount(1);

    pub fn new(count: impl Into<u64>) -> Result<VcpuCount, VcpuCountError> {
        let count = count.into();
        match u8::try_from(count) {
            Ok(n) if (1..=MAX_VCPUS).contains(&n) => Ok(VcpuCount(n)),
            _ => Err(VcpuCountError::OutOfRange(count)),
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }

    pub fn as_usize(self) -> usize {
        usize::from(self.0)
    }

    /// vCPU `index` of this VM, if there is one.
    pub fn index(self, index: u8) -> Option<VcpuIndex> {
        (index < self.0).then_some(VcpuIndex { index, count: self })
    }

    /// Every vCPU of the VM, the boot vCPU first.
    pub fn indices(self) -> impl Iterator<Item = VcpuIndex> {
        (0..self.0).map(move |index| VcpuIndex { index, count: self })
    }
}

impl TryFrom<u64> for VcpuCount {
    type Error = VcpuCountError;
    fn try_from(count: u64) -> Result<Self, Self::Error> {
        VcpuCount::new(count)
    }
}

impl From<VcpuCount> for u8 {
    fn from(count: VcpuCount) -> u8 {
        count.0
    }
}

impl FromStr for VcpuCount {
    type Err = VcpuCountError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let count: u64 = text
            .trim()
            .parse()
            .map_err(|_| VcpuCountError::NotANumber(text.to_string()))?;
        VcpuCount::new(count)
    }
}

impl fmt::Display for VcpuCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One vCPU of a VM with [`VcpuCount`] vCPUs: made only by [`VcpuCount::indices`], so the
/// index is always below the count it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuIndex {
    index: u8,
    count: VcpuCount,
}

impl VcpuIndex {
    /// The index, which is also the vCPU's APIC id.
    pub fn get(self) -> u8 {
        self.index
    }

    pub fn count(self) -> VcpuCount {
        self.count
    }

    /// The boot vCPU (index 0).
    pub fn is_boot(self) -> bool {
        self.index == 0
    }
}

impl fmt::Display for VcpuIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.index.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outside_1_to_254_are_refused_with_one_message() {
        assert_eq!(VcpuCount::new(1u8).unwrap().get(), 1);
        assert_eq!(VcpuCount::new(254u8).unwrap().get(), 254);
        for bad in [0u64, 255, 256, 1000, u64::MAX] {
            let err = VcpuCount::new(bad).unwrap_err();
            assert_eq!(err, VcpuCountError::OutOfRange(bad));
            assert_eq!(
                err.to_string(),
                format!("the vCPU count must be 1 to 254, not {bad}")
            );
        }
        assert_eq!("4".parse::<VcpuCount>().unwrap().get(), 4);
        assert_eq!(
            "two".parse::<VcpuCount>().unwrap_err().to_string(),
            "the vCPU count must be a number from 1 to 254, not 'two'"
        );
        assert!("-1".parse::<VcpuCount>().is_err());
        assert!("0".parse::<VcpuCount>().is_err());
    }

    #[test]
    fn serde_is_a_plain_number_and_checks_it() {
        let count = VcpuCount::new(3u8).unwrap();
        assert_eq!(serde_json::to_string(&count).unwrap(), "3");
        assert_eq!(serde_json::from_str::<VcpuCount>("3").unwrap(), count);
        for bad in ["0", "255", "-1", "\"2\""] {
            assert!(serde_json::from_str::<VcpuCount>(bad).is_err(), "{bad}");
        }
        let err = serde_json::from_str::<VcpuCount>("300").unwrap_err();
        assert!(err.to_string().contains("1 to 254, not 300"), "{err}");
    }

    #[test]
    fn indices_run_from_the_boot_vcpu_to_count_minus_one() {
        let count = VcpuCount::new(3u8).unwrap();
        let indices: Vec<_> = count.indices().collect();
        assert_eq!(
            indices.iter().map(|i| i.get()).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(indices[0].is_boot() && !indices[1].is_boot());
        assert!(indices.iter().all(|i| i.count() == count));
        assert_eq!(VcpuCount::new(MAX_VCPUS).unwrap().indices().count(), 254);
        assert_eq!(count.index(2), Some(indices[2]));
        assert_eq!(count.index(3), None);
    }
}
