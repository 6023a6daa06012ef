//! Device wiring: each virtio device gets its MMIO window, IRQ (an irqfd), one ioeventfd per
//! queue and its command-line announcement.

use super::*;

/// The command line the guest gets: the user's (or the default), `root=` for the first disk
/// when the user named no root, and one announcement per virtio-mmio device.
pub fn full_cmdline(base: &str, disks: &[DiskConfig], virtio: &[VirtioSlot]) -> String {
    let mut cmdline = base.trim().to_string();
    let names_root = base.split_whitespace().any(|arg| arg.starts_with("root="));
    if let (Some(first), false) = (disks.first(), names_root) {
        let mode = if first.read_only { "ro" } else { "rw" };
        cmdline.push_str(&format!(" root=/dev/vda {mode}"));
    }
    for slot in virtio {
        cmdline.push(' ');
        cmdline.push_str(&virtio_cmdline_entry(slot.base, slot.irq));
    }
    cmdline
}

/// The host side of each virtio slot, in the order [`create_virtio_devices`] fills them.
pub(super) fn virtio_backends(disks: &[DiskConfig], nets: &[NetConfig]) -> Vec<VirtioBackend> {
    let disks = disks.iter().map(|d| VirtioBackend::Block {
        path: d.path.clone(),
        read_only: d.read_only,
    });
    let nets = nets.iter().map(|n| VirtioBackend::Net {
        tap: n.tap.clone(),
        mac: n.mac,
    });
    disks.chain(nets).collect()
}

/// Opens every disk and tap, wraps each in a virtio-mmio transport with its own window, IRQ
/// (an irqfd) and one ioeventfd per queue, so a guest kick never exits to user space.
pub(super) fn create_virtio_devices(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
) -> Result<Vec<VirtioSlot>, VmError> {
    let mut models: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &config.disks {
        // The io_uring ring is set up here, before the sandbox applies.
        let block =
            Block::with_engine(&disk.path, disk.read_only, disk.engine).map_err(|source| {
                VmError::Disk {
                    path: disk.path.clone(),
                    source,
                }
            })?;
        log::info!("disk {}: {} engine", disk.path.display(), block.engine());
        models.push(Box::new(block));
    }
    for net in &config.nets {
        let card = Net::new(&net.tap, net.mac).map_err(|source| VmError::Net {
            tap: net.tap.clone(),
            source,
        })?;
        models.push(Box::new(card));
    }
    // After disks and nets, so the first disk stays /dev/vda at the first window.
    let balloon = config.balloon.as_ref();
    models.extend(optional_devices::create(
        config.rng,
        balloon,
        config.mem_bytes,
    )?);
    if let Some(vsock) = &config.vsock {
        models.push(Box::new(vsock.build()?));
    }
    let mut slots = Vec::with_capacity(models.len());
    for (index, model) in models.into_iter().enumerate() {
        let (base, irq) = virtio_slot(index).ok_or(VmError::TooManyDevices)?;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        vm_fd
            .register_irqfd(&irq_evt, irq)
            .map_err(kvm_err("KVM_IRQFD (virtio)"))?;
        let transport =
            MmioTransport::new(model, mem.clone(), irq_evt).map_err(io_err("virtio transport"))?;
        for (queue, evt) in (0u32..).zip(transport.queue_events()) {
            let notify = IoEventAddress::Mmio(base + VIRTIO_MMIO_QUEUE_NOTIFY);
            vm_fd
                .register_ioevent(evt, &notify, queue)
                .map_err(kvm_err("KVM_IOEVENTFD"))?;
        }
        slots.push(VirtioSlot {
            base,
            irq,
            transport,
        });
    }
    Ok(slots)
}
