#!/usr/bin/env python3
"""Writes the seed corpora of the binary fuzz targets (fuzz/corpus/<target>/seed-*).

The text seeds (JSON, HTTP, argument lists) are checked in as written; the binary ones
(virtqueues, block requests, kernel images) are made here, following the input layouts
documented at the top of each target and in fuzz/src/guest.rs. Run from anywhere:

    python3 fuzz/make_seeds.py
"""

import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

F_NEXT, F_WRITE = 1, 2
DATA = 0x2000  # where the data part of a queue input lands in guest memory
REGION1 = 0x20000


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def queue(size_log2, descs, heads, data=b"", start=0, avail_idx=None):
    """A queue input (fuzz/src/guest.rs): size, start, avail flags/idx, ring, table, data."""
    size = 1 << size_log2
    if avail_idx is None:
        avail_idx = (start + len(heads)) & 0xFFFF
    out = struct.pack("<BHHH", size_log2, start, 0, avail_idx)
    ring = [0] * size
    for i, h in enumerate(heads):
        ring[(start + i) % size] = h
    out += struct.pack("<%dH" % size, *ring)
    table = list(descs) + [(0, 0, 0, 0)] * (size - len(descs))
    for addr, length, flags, nxt in table:
        out += struct.pack("<QIHH", addr, length, flags, nxt)
    return out + data


def blk_header(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


def virtio_seeds():
    # IN: header, 512-byte data, status, in three descriptors.
    read = queue(3, [(DATA, 16, F_NEXT, 1), (DATA + 0x100, 512, F_WRITE | F_NEXT, 2),
                     (DATA + 0x300, 1, F_WRITE, 0)], [0], blk_header(0, 1))
    # OUT: header and data readable, status writable; data in the second region.
    write_req = queue(3, [(DATA, 16, F_NEXT, 1), (REGION1, 1024, F_NEXT, 2),
                          (DATA + 0x300, 1, F_WRITE, 0)], [0], blk_header(1, 2))
    # Three requests at once (FLUSH, GET_ID, an unsupported type), indices about to wrap.
    many = queue(3, [(DATA, 16, F_NEXT, 1), (DATA + 0x300, 1, F_WRITE, 0),
                     (DATA + 0x10, 16, F_NEXT, 3), (DATA + 0x400, 21, F_WRITE, 0),
                     (DATA + 0x20, 16, F_NEXT, 5), (DATA + 0x500, 1, F_WRITE, 0)],
                 [0, 2, 4], blk_header(4, 0) + blk_header(8, 0) + blk_header(99, 0),
                 start=0xFFFE)
    # The header cut over two descriptors, the status byte at the end of the data buffer.
    split = queue(2, [(DATA, 8, F_NEXT, 1), (DATA + 8, 8, F_NEXT, 2),
                      (DATA + 0x100, 513, F_WRITE, 0)], [0], blk_header(0, 0))
    # A loop, and a buffer past the end of region 0.
    loop = queue(2, [(DATA, 16, F_NEXT, 1), (DATA, 16, F_NEXT, 0),
                     (0xFFF0, 0x20, F_WRITE, 0)], [0, 2], blk_header(0, 0))
    for name, q in [("read", read), ("write", write_req), ("many", many), ("split", split),
                    ("loop", loop)]:
        write("virtio_queue", name, q)
    # virtio_blk: options byte (bit 0 read-only, bit 1 Writeback, bits 2-7 sectors) first.
    for name, opts, q in [("read", 8 << 2, read), ("write", 8 << 2, write_req),
                          ("write-ro", (8 << 2) | 1, write_req), ("many", (4 << 2) | 2, many),
                          ("split", 1 << 2, split), ("loop", 8 << 2, loop)]:
        write("virtio_blk", name, bytes([opts]) + q)


def elf(paddr, memsz, entry, pvh=None):
    code = b"\xf4" * 16
    phnum = 2 if pvh is not None else 1
    data_off = 64 + 56 * phnum
    note_off = data_off + len(code)
    f = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    f += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, 64, 0, 0, 64, 56, phnum, 0, 0, 0)

    def ph(kind, off, addr, filesz, msz):
        return struct.pack("<IIQQQQQQ", kind, 7, off, addr, addr, filesz, msz, 4)

    f += ph(1, data_off, paddr, len(code), memsz)
    if pvh is not None:
        f += ph(4, note_off, 0, 20, 20)
    f += code
    if pvh is not None:
        f += struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", pvh)
    return f


def bzimage(init_size=0x10000, setup_sects=1, pm_len=64):
    setup = bytearray(((setup_sects or 4) + 1) * 512)  # 0 means 4 sectors
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    setup[0x206:0x208] = struct.pack("<H", 0x020F)
    setup[0x211] = 1  # LOADED_HIGH
    setup[0x22C:0x230] = struct.pack("<I", 0x7FFFFFFF)  # initrd_addr_max
    setup[0x236:0x238] = struct.pack("<H", 1)  # XLF_KERNEL_64
    setup[0x260:0x264] = struct.pack("<I", init_size)
    return bytes(setup) + b"\xf4" * pm_len


def loader(options, vcpus, initrd_sel, cmdline, image):
    c = cmdline.encode()
    return struct.pack("<BBBH", options, vcpus - 1, initrd_sel, len(c)) + c + image


def loader_seeds():
    # options: bits 0-1 entry (auto, pvh, linux64), 2-3 memory (2, 16, 64 MiB),
    # 4-5 virtio-mmio devices, 6 root drive, 7 initrd.
    mem16, mem64 = 1 << 2, 2 << 2
    write("kernel_loader", "elf", loader(mem16 | (1 << 4) | 0x40, 1, 0,
                                         "console=ttyS0 reboot=k panic=1",
                                         elf(0x100000, 0x2000, 0x100004)))
    write("kernel_loader", "elf-pvh", loader(1 | mem64 | (2 << 4) | 0x80, 2, 2,
                                             "console=ttyS0 -- init-arg",
                                             elf(0x100000, 0x2000, 0x100004, 0x100008)))
    write("kernel_loader", "bzimage", loader(2 | mem64 | 0x80, 1, 4,
                                             "quiet root=/dev/vda", bzimage()))
    write("kernel_loader", "bzimage-small", loader(mem16 | (3 << 4), 4, 0, "-- x",
                                                   bzimage(init_size=0x400000,
                                                           setup_sects=0, pm_len=16)))


if __name__ == "__main__":
    virtio_seeds()
    loader_seeds()
