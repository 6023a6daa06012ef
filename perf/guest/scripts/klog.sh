# volt.run=klog: the kernel's own lines about its firmware tables, CPUs and virtio devices, from
# dmesg, for a guest booted with `quiet` (the end-to-end test checks them without paying for a
# whole console's worth of port exits).
dmesg | grep -E 'ACPI: (RSDP|XSDT|FACP|DSDT|APIC)|Using ACPI|MultiProcessor|MPTABLE|smpboot: (Allowing|Total)|Brought up|virtio'
