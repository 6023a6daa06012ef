//! Snapshots: the state of a paused VM (vCPUs, interrupt controllers, PIT, clock, devices) in a
//! versioned, checksummed state file ([`format`]), plus a guest-memory file restored by mapping
//! it ([`memory`]).
//!
//! Creating runs on the event loop (which owns the devices) while the vCPUs are parked; each
//! parked vCPU thread reads its own vCPU's state. Restoring happens in a fresh process before
//! any thread starts: the VM is built as for a boot, except that guest memory is the mapped
//! file, and then every piece of state is written back.

pub mod dir;
pub mod format;
pub mod memory;
pub mod vcpu_state;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use devices::i8042::{I8042Snapshot, I8042};
use devices::serial::{SerialConsole, SerialSnapshot};
use devices::state::{Persist, StateError};
use devices::virtio::{BalloonConfig, TransportSnapshot};

use crate::boot::layout::guest_ram_ranges;
use crate::device_manager::{Devices, VirtioSlot};
use memory::{MapError, RegionSnapshot};
use vcpu_state::{VcpuSnapshot, VcpuStateError};

/// The Volt that wrote a snapshot must be the Volt that restores it.
pub const VOLT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The host back-end of a virtio device, reopened on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioBackend {
    Block { path: PathBuf, read_only: bool },
    Net { tap: String, mac: Option<[u8; 6]> },
}

/// `--balloon` settings, kept so the restored VM gets the same device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonLayout {
    pub target_bytes: u64,
    pub free_page_reporting: bool,
    pub stats_interval_ms: Option<u64>,
    pub deflate_on_oom: bool,
}

impl From<&BalloonConfig> for BalloonLayout {
    fn from(config: &BalloonConfig) -> Self {
        BalloonLayout {
            target_bytes: config.target_bytes,
            free_page_reporting: config.free_page_reporting,
            stats_interval_ms: config
                .stats_interval
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            deflate_on_oom: config.deflate_on_oom,
        }
    }
}

impl From<&BalloonLayout> for BalloonConfig {
    fn from(layout: &BalloonLayout) -> Self {
        BalloonConfig {
            target_bytes: layout.target_bytes,
            free_page_reporting: layout.free_page_reporting,
            stats_interval: layout.stats_interval_ms.map(Duration::from_millis),
            deflate_on_oom: layout.deflate_on_oom,
        }
    }
}

/// What the VM was built from, kept for its snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineLayout {
    /// Checked when the state file is read: a count outside 1..=254 does not parse.
    pub vcpus: crate::boot::VcpuCount,
    pub mem_bytes: u64,
    /// Disks then network cards, in slot order; the rng and the balloon follow them.
    pub backends: Vec<VirtioBackend>,
    pub rng: bool,
    pub balloon: Option<BalloonLayout>,
    pub acpi: bool,
    /// A vsock device (last slot): its host connections cannot be saved, so such a VM is
    /// not snapshotted.
    pub vsock: bool,
}

impl MachineLayout {
    /// How many virtio slots the layout fills.
    pub fn virtio_slots(&self) -> usize {
        self.backends.len() + usize::from(self.rng) + usize::from(self.balloon.is_some())
    }
}

/// The VM-wide KVM state.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VirtioState {
    pub base: u64,
    pub irq: u32,
    pub transport: TransportSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicesState {
    pub serial: SerialSnapshot,
    pub i8042: I8042Snapshot,
    pub virtio: Vec<VirtioState>,
}

/// The body of a state file.
#[derive(Serialize, Deserialize)]
pub struct VmSnapshot {
    pub volt_version: String,
    pub machine: MachineLayout,
    pub memory: Vec<RegionSnapshot>,
    pub vcpus: Vec<VcpuSnapshot>,
    pub vm: VmState,
    pub devices: DevicesState,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the VM must be paused first (PATCH /vm {{\"state\":\"Paused\"}})")]
    NotPaused,
    #[error(
        "a VM with a vsock device cannot be snapshotted (its host connections cannot be restored)"
    )]
    Vsock,
    #[error("{0}")]
    Path(String),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot restore {path}: {source}")]
    Format {
        path: PathBuf,
        source: format::FormatError,
    },
    #[error("cannot restore {path}: its state does not parse: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot restore {path}: it was made by Volt {found}; this is Volt {VOLT_VERSION}")]
    OtherVolt { path: PathBuf, found: String },
    #[error("cannot restore: {0}")]
    Inconsistent(String),
    #[error("saving the vCPUs failed: {0}")]
    Vcpus(#[source] crate::pause::SaveError),
    #[error("vCPU state: {0}")]
    VcpuState(#[from] VcpuStateError),
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("device state: {0}")]
    Device(#[from] StateError),
    #[error("guest memory: {0}")]
    Memory(#[from] MapError),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

fn irqchip(vm_fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm_fd
        .get_irqchip(&mut chip)
        .map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads the VM-wide state. `clock` is the KVM clock as saved when the VM was paused.
pub fn save_vm_state(vm_fd: &VmFd, clock: kvm_clock_data) -> Result<VmState, SnapshotError> {
    Ok(VmState {
        pic_master: irqchip(vm_fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm_fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm_fd, KVM_IRQCHIP_IOAPIC)?,
        pit: vm_fd.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
        clock,
    })
}

/// Lets every device finish its in-flight host work (io_uring requests) first.
pub fn quiesce_devices(devices: &mut Devices) {
    for slot in &mut devices.virtio {
        slot.transport.quiesce();
    }
}

/// Saves every device (the VM is paused; the caller is the loop that owns them).
pub fn save_devices(devices: &Devices) -> DevicesState {
    DevicesState {
        serial: devices.serial.save(),
        i8042: devices.i8042.save(),
        virtio: devices
            .virtio
            .iter()
            .map(|slot| VirtioState {
                base: slot.base,
                irq: slot.irq,
                transport: slot.transport.save(),
            })
            .collect(),
    }
}

/// How big the two files came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSizes {
    pub state_bytes: u64,
    /// Apparent size of the memory file (guest RAM).
    pub memory_bytes: u64,
    /// What the memory file occupies on disk (zero pages are holes).
    pub memory_allocated: u64,
}

/// Writes the memory file and then the state file (which names the memory layout).
pub fn write_snapshot(
    mut snapshot: VmSnapshot,
    mem: &GuestMemoryMmap,
    state_path: &Path,
    mem_path: &Path,
) -> Result<SnapshotSizes, SnapshotError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { what, path, source }
    };
    let mem_file = dir::create_file(mem_path)?;
    snapshot.memory = memory::write_memory(mem, &mem_file).map_err(io("write", mem_path))?;
    mem_file.sync_all().map_err(io("sync", mem_path))?;
    let body = serde_json::to_vec(&snapshot).map_err(|e| SnapshotError::Parse {
        path: state_path.to_path_buf(),
        source: e,
    })?;
    let bytes = format::encode(&body);
    let mut state_file = dir::create_file(state_path)?;
    state_file
        .write_all(&bytes)
        .map_err(io("write", state_path))?;
    state_file.sync_all().map_err(io("sync", state_path))?;
    let meta = mem_file.metadata().map_err(io("stat", mem_path))?;
    Ok(SnapshotSizes {
        state_bytes: bytes.len() as u64,
        memory_bytes: meta.len(),
        memory_allocated: std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
    })
}

/// A snapshot read back and checked, with its memory mapped: ready to build a VM from.
pub struct Restore {
    pub snapshot: VmSnapshot,
    pub memory: GuestMemoryMmap,
    /// Run the guest at once (else it starts paused).
    pub resume: bool,
}

/// Reads and checks a state file and maps its memory file.
pub fn load(state_path: &Path, mem_path: &Path, resume: bool) -> Result<Restore, SnapshotError> {
    let bytes = std::fs::read(state_path).map_err(|source| SnapshotError::Io {
        what: "read",
        path: state_path.to_path_buf(),
        source,
    })?;
    let body = format::decode(&bytes).map_err(|source| SnapshotError::Format {
        path: state_path.to_path_buf(),
        source,
    })?;
    // The version is checked before the rest, whose meaning may differ between versions.
    #[derive(Deserialize)]
    struct VersionOnly {
        volt_version: String,
    }
    let parse_err = |source| SnapshotError::Parse {
        path: state_path.to_path_buf(),
        source,
    };
    let version: VersionOnly = serde_json::from_slice(body).map_err(parse_err)?;
    if version.volt_version != VOLT_VERSION {
        return Err(SnapshotError::OtherVolt {
            path: state_path.to_path_buf(),
            found: version.volt_version,
        });
    }
    let snapshot: VmSnapshot = serde_json::from_slice(body).map_err(parse_err)?;
    check_consistent(&snapshot)?;
    let mem_file = File::open(mem_path).map_err(|source| SnapshotError::Io {
        what: "open",
        path: mem_path.to_path_buf(),
        source,
    })?;
    let memory = memory::map_memory(
        mem_file,
        &snapshot.memory,
        &guest_ram_ranges(snapshot.machine.mem_bytes),
        snapshot.machine.mem_bytes,
    )?;
    Ok(Restore {
        snapshot,
        memory,
        resume,
    })
}

fn check_consistent(snapshot: &VmSnapshot) -> Result<(), SnapshotError> {
    let machine = &snapshot.machine;
    if snapshot.vcpus.len() != machine.vcpus.as_usize() {
        return Err(SnapshotError::Inconsistent(format!(
            "{} vCPU states for {} vCPUs",
            snapshot.vcpus.len(),
            machine.vcpus
        )));
    }
    if snapshot.devices.virtio.len() != machine.virtio_slots() {
        return Err(SnapshotError::Inconsistent(format!(
            "{} virtio device states for {} devices",
            snapshot.devices.virtio.len(),
            machine.virtio_slots()
        )));
    }
    Ok(())
}

/// Writes the saved VM-wide and vCPU state into a freshly built VM (nothing runs yet).
pub fn restore_machine(
    vm_fd: &VmFd,
    vcpus: &[VcpuFd],
    snapshot: &VmSnapshot,
) -> Result<(), SnapshotError> {
    let vm = &snapshot.vm;
    vm_fd.set_pit2(&vm.pit).map_err(kvm("KVM_SET_PIT2"))?;
    for chip in [&vm.pic_master, &vm.pic_slave, &vm.ioapic] {
        vm_fd.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    let mut clock = vm.clock;
    clock.flags = 0;
    vm_fd.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
    for (vcpu, state) in vcpus.iter().zip(&snapshot.vcpus) {
        vcpu_state::restore_vcpu(vcpu, state)?;
    }
    Ok(())
}

/// Puts the saved device state into freshly built devices (guest memory already restored).
pub fn restore_devices(
    serial: &mut SerialConsole,
    i8042: &mut I8042,
    virtio: &mut [VirtioSlot],
    snapshot: &VmSnapshot,
) -> Result<(), SnapshotError> {
    serial.restore(&snapshot.devices.serial)?;
    i8042.restore(&snapshot.devices.i8042)?;
    for (slot, saved) in virtio.iter_mut().zip(&snapshot.devices.virtio) {
        if saved.base != slot.base || saved.irq != slot.irq {
            return Err(SnapshotError::Inconsistent(format!(
                "virtio device at {:#x} (IRQ {}) was saved at {:#x} (IRQ {})",
                slot.base, slot.irq, saved.base, saved.irq
            )));
        }
        slot.transport.restore(&saved.transport)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_keeps_its_vcpu_count_as_a_number_and_refuses_a_bad_one() {
        let layout = MachineLayout {
            vcpus: crate::boot::VcpuCount::new(4u8).unwrap(),
            mem_bytes: 128 << 20,
            backends: Vec::new(),
            rng: true,
            balloon: None,
            acpi: true,
            vsock: false,
        };
        let json = serde_json::to_string(&layout).unwrap();
        assert!(json.contains(r#""vcpus":4"#), "{json}");
        assert_eq!(
            serde_json::from_str::<MachineLayout>(&json).unwrap(),
            layout
        );
        for bad in ["0", "255"] {
            let json = json.replace(r#""vcpus":4"#, &format!(r#""vcpus":{bad}"#));
            let err = serde_json::from_str::<MachineLayout>(&json).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("the vCPU count must be 1 to 254, not {bad}")),
                "{err}"
            );
        }
    }
}
