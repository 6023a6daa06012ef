//! The virtio devices a VM gets besides its disks and network cards: the entropy device
//! (`--rng`, on by default) and the memory balloon (`--balloon`).

use std::io;

use devices::virtio::{Balloon, BalloonConfig, Rng, RngConfig, VirtioDevice};

/// Why an optional device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum OptionalDeviceError {
    #[error("--balloon-target {target} MiB is not smaller than the guest's {mem} MiB of memory")]
    BalloonTargetTooLarge { target: u64, mem: u64 },
    #[error("cannot create the {device} timer: {source}")]
    Timer {
        device: &'static str,
        source: io::Error,
    },
}

/// The device models for `rng` and `balloon`, in the order they get their MMIO windows.
pub fn create(
    rng: bool,
    balloon: Option<&BalloonConfig>,
    mem_bytes: u64,
) -> Result<Vec<Box<dyn VirtioDevice>>, OptionalDeviceError> {
    let mut models: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if rng {
        let device =
            Rng::new(RngConfig::default()).map_err(|source| OptionalDeviceError::Timer {
                device: "virtio-rng",
                source,
            })?;
        models.push(Box::new(device));
    }
    if let Some(config) = balloon {
        if config.target_bytes >= mem_bytes {
            return Err(OptionalDeviceError::BalloonTargetTooLarge {
                target: config.target_bytes >> 20,
                mem: mem_bytes >> 20,
            });
        }
        let device = Balloon::new(config.clone()).map_err(|source| OptionalDeviceError::Timer {
            device: "virtio-balloon",
            source,
        })?;
        models.push(Box::new(device));
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_then_balloon_and_a_target_must_fit_the_guest() {
        let balloon = BalloonConfig {
            target_bytes: 64 << 20,
            ..BalloonConfig::default()
        };
        let models = create(true, Some(&balloon), 128 << 20).unwrap();
        let types: Vec<u32> = models.iter().map(|m| m.device_type()).collect();
        assert_eq!(types, vec![4, 5]);
        assert!(create(false, None, 128 << 20).unwrap().is_empty());
        let Err(err) = create(false, Some(&balloon), 64 << 20) else {
            panic!("a balloon target as large as the guest was accepted");
        };
        assert!(err.to_string().contains("--balloon-target"), "{err}");
    }
}
