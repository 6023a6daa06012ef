#!/usr/bin/env python3
"""Writes the committed seed corpus in fuzz/seeds/<target>/ (run again after changing the
input format of a target in fuzz/src/lib.rs or fuzz/fuzz_targets/)."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- virtio guest operations (fuzz/src/lib.rs VirtioGuest::step) ---
def setup(features, size_exps):
    return bytes([0]) + struct.pack("<Q", features) + bytes(size_exps)


def desc(queue, index, addr, length, flags, nxt):
    return (bytes([3, queue]) + struct.pack("<H", index) + bytes([0]) + struct.pack("<I", addr)
            + bytes([0]) + struct.pack("<HHH", length, flags, nxt))


def mem(addr, data):
    assert len(data) < 256
    return bytes([6]) + struct.pack("<I", addr) + bytes([len(data)]) + data


def publish(queue, head):
    return bytes([4, queue]) + struct.pack("<H", head) + bytes([0])


def kick(queue):
    return bytes([5, queue])


NEXT, WRITE = 1, 2
EVENT_IDX = 1 << 29


def block_request(kind, sector, data_flags):
    return (desc(0, 0, 0x20000, 16, NEXT, 1) + desc(0, 1, 0x21000, 512, data_flags | NEXT, 2)
            + desc(0, 2, 0x22000, 1, WRITE, 0)
            + mem(0x20000, struct.pack("<IIQ", kind, 0, sector)) + publish(0, 0) + kick(0))


put("virtio_block", "read", setup(0, [4]) + block_request(0, 1, WRITE))
put("virtio_block", "write_event_idx", setup(EVENT_IDX, [4]) + block_request(1, 3, 0))
put("virtio_block", "flush_getid", setup(0, [3]) + block_request(4, 0, WRITE)
    + block_request(8, 0, WRITE))
put("virtio_block", "out_of_range", setup(0, [4]) + block_request(0, 1 << 40, WRITE))
put("virtio_block", "registers", bytes([1, 0x70, 0, 0, 1, 0, 0, 0, 2, 0x00, 0, 2, 2, 0x34, 0, 2]))

# --- virtio-net: guest ops are prefixed by a byte >= 2 (mod 8), host frames by 0 ---
def g(op):
    return bytes([2]) + op


def host_frame(data):
    return bytes([0]) + struct.pack("<H", len(data)) + data


frame = bytes(12) + b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x09" + b"\x88\xb5" + b"volt" * 12
tx = (g(desc(1, 0, 0x30000, len(frame), 0, 0)) + g(mem(0x30000, frame)) + g(publish(1, 0))
      + g(kick(1)) + bytes([1]))
rx = (g(desc(0, 0, 0x40000, 2048, WRITE, 0)) + g(publish(0, 0)) + host_frame(frame)
      + g(kick(0)) + g(bytes([7, 0])))
put("virtio_net", "tx", g(setup(EVENT_IDX, [4, 4])) + tx)
put("virtio_net", "rx", g(setup(0, [4, 4])) + rx)
put("virtio_net", "rx_small_buffer", g(setup(0, [2, 2])) + g(desc(0, 0, 0x40000, 8, WRITE, 0))
    + g(publish(0, 0)) + host_frame(frame) + g(bytes([7, 0])))

# --- serial + i8042 (fuzz_targets/serial_i8042.rs) ---
hello = b"".join(bytes([0, 0, c]) for c in b"hello\n")
put("serial_i8042", "console", bytes([0, 3, 0x80, 0, 0, 1, 0, 3, 3]) + hello + bytes([4, 0xff, 0xff]))
put("serial_i8042", "loopback", bytes([0, 4, 0x10, 3, 4]) + b"host" + bytes([0, 0, 0x41, 2, 0, 2, 5, 0, 4, 0x1b, 2, 0])
    + bytes([4, 0, 0]))
put("serial_i8042", "eagain", bytes([6, 0xff, 0x40, 0x61, 4, 0x10, 0, 4, 0, 0, 5, 0, 4, 0xff, 0xff]))
put("serial_i8042", "i8042_probe", bytes([7, 1, 0x20, 8, 0, 8, 4, 7, 1, 0x60, 7, 0, 0x47, 7, 1, 0xaa, 8, 0,
                                          7, 0, 0xf4, 8, 0, 7, 1, 0xd1, 7, 0, 0xfe]))

# --- kernel images ---
def elf(paddr=0x200000, entry=0x200000, size=16):
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, bytes(7), 2, 62, 1,
                       entry, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, paddr, paddr, size, size, 0x1000)
    body = ehdr + phdr
    return body + bytes(0x1000 - len(body)) + b"\xf4" * size + b"Linux version 6.1.0 (fuzz) #1 SMP\n\0"


def bzimage(version=0x020F, setup_sects=1, init_size=0x10000, payload=512):
    img = bytearray(512 * (setup_sects + 1) + payload)
    img[0x1F1] = setup_sects
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, version)
    img[0x211] = 1  # LOADED_HIGH
    struct.pack_into("<I", img, 0x228, 0)  # cmd_line_ptr
    struct.pack_into("<I", img, 0x22C, 0x37FFFFFF)  # initrd_addr_max
    struct.pack_into("<H", img, 0x236, 1)  # XLF_KERNEL_64
    struct.pack_into("<I", img, 0x238, 2048)  # cmdline_size
    struct.pack_into("<I", img, 0x260, init_size)
    return bytes(img)


put("kernel_loader", "elf", elf())
put("kernel_loader", "elf_low", elf(paddr=0x1000))
put("kernel_loader", "bzimage", bzimage())
put("kernel_loader", "bzimage_huge_init", bzimage(init_size=0xFFFFFFFF))
put("kernel_loader", "bzimage_old", bzimage(version=0x0200))

# --- kernel store metadata ---
entry = {"name": "micro", "file": "micro-0123456789abcdef", "format": "bzimage",
         "version": "6.1.0", "version_string": "6.1.0 (x) #1 SMP", "size": 1234,
         "sha256": "ab" * 32, "added": "2026-01-01T00:00:00Z", "source": "/tmp/bzImage"}
put("kernel_metadata", "one", json.dumps({"default": "micro", "kernels": [entry]}).encode())
put("kernel_metadata", "two", json.dumps({"kernels": [dict(entry, name="z", file="z-1"), entry]},
                                         indent=2).encode())
put("kernel_metadata", "escape", json.dumps({"kernels": [dict(entry, file="../../etc/passwd")]}).encode())
put("kernel_metadata", "empty", b"{}")
