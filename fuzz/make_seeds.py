#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: fuzz/corpus/<target>/seed-*.

A few small, realistic inputs per target, following the input layouts documented at the
top of each target (fuzz/fuzz_targets/*.rs) and in fuzz/src/guest.rs. The seeds are checked
in; this script is how they were made (run it again after changing a layout). Only files
named seed-* are tracked: what a fuzzer adds to a corpus directory is ignored by git.

    python3 fuzz/make_seeds.py
"""

import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

F_NEXT, F_WRITE = 1, 2
DATA = 0x2000  # where the data part of a queue input lands in guest memory
REGION1 = 0x20000


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
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


def balloon_seeds():
    # virtio_balloon: options byte (bits 0-1 queue: 0 inflate, 1 deflate, 2 stats; bits 2-3
    # extra notifications; bit 4 write `actual`), `actual` (u32), then the queue.
    def opts(q, turns=0, actual=None):
        b = q | (turns << 2) | (0x10 if actual is not None else 0)
        return bytes([b]) + struct.pack("<I", actual or 0)
    pfns = struct.pack("<8I", 0x2A, 0x2B, 0x20, 0x21, 0x10, 0x30, 0x25, 0x25)
    inflate = queue(3, [(DATA, len(pfns), 0, 0), (DATA + 0x100, 8, 0, 0)], [0, 1],
                    pfns + b"\0" * (0x100 - len(pfns)) + struct.pack("<2I", 0x2E, 0xFFFFFFFF))
    # Hostile lists: writable, not whole frame numbers, too long, a loop, in the hole.
    hostile = queue(3, [(DATA, 8, F_WRITE, 0), (DATA, 6, 0, 0), (DATA, 257 * 4, 0, 0),
                        (DATA, 4, F_NEXT, 4), (DATA + 4, 4, F_NEXT, 3), (0x18000, 4, 0, 0),
                        (DATA, 4, F_NEXT, 7), (REGION1, 4, 0, 0)],
                    [0, 1, 2, 3, 5, 6], pfns)
    stat = lambda tag, v: struct.pack("<HQ", tag, v)
    entries = stat(4, 1 << 20) + stat(5, 64 << 20) + stat(99, 1) + stat(15, 7)
    stats = queue(2, [(DATA, len(entries), 0, 0), (DATA + 0x100, 10, 0, 0),
                      (DATA, 4096, 0, 0), (DATA, 10, F_WRITE, 0)], [0, 1, 2, 3],
                  entries + b"\0" * (0x100 - len(entries)) + stat(3, 5))
    for name, o, q in [("inflate", opts(0, 1, 8192), inflate), ("inflate-hostile", opts(0), hostile),
                       ("deflate", opts(1), inflate), ("deflate-hostile", opts(1, 2), hostile),
                       ("stats", opts(2, 0, 3), stats), ("stats-flood", opts(2, 3), stats)]:
        write("virtio_balloon", name, o + q)


def rng_seeds():
    # virtio_rng: options byte (bit 0 rate limiter, bits 1-2 extra notifications) first.
    # Two plain requests, one split over two writable buffers, one in region 1.
    plain = queue(3, [(DATA, 64, F_WRITE, 0), (DATA + 0x100, 16, F_WRITE | F_NEXT, 2),
                      (DATA + 0x200, 48, F_WRITE, 0), (REGION1, 4096, F_WRITE, 0)],
                  [0, 1, 3])
    # Hostile: a readable buffer, readable then writable, a loop, a buffer in the hole,
    # an empty one, then a good one.
    hostile = queue(3, [(DATA, 64, 0, 0), (DATA, 16, F_NEXT, 2), (DATA + 0x100, 16, F_WRITE, 0),
                        (DATA, 16, F_WRITE | F_NEXT, 4), (DATA + 0x10, 16, F_WRITE | F_NEXT, 3),
                        (0x18000, 64, F_WRITE, 0), (DATA, 0, F_WRITE, 0),
                        (DATA + 0x200, 32, F_WRITE, 0)],
                    [0, 1, 3, 5, 6, 7])
    # More requests than the limiter's buckets allow, and a giant one (64 KiB answer).
    many = queue(4, [(DATA + 0x40 * i, 0x40, F_WRITE, 0) for i in range(8)]
                 + [(REGION1, 0x10000, F_WRITE, 0)], list(range(9)))
    for name, opts, q in [("plain", 0, plain), ("hostile", 2, hostile), ("limited", 1 | 6, many),
                          ("giant", 0, many)]:
        write("virtio_rng", name, bytes([opts]) + q)


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
    setup[0x214:0x218] = struct.pack("<I", 0x100000)  # code32_start
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


def vm_config_seeds():
    write("vm_config", "minimal.json", json.dumps({
        "boot-source": {"kernel_image_path": "/usr/bin/true", "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 64},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/usr/bin/true",
                    "is_root_device": True, "is_read_only": True}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                "guest_mac": "06:00:AC:10:00:02"}],
        "vsock": {"guest_cid": 3, "uds_path": "/run/v.sock"}}))
    write("vm_config", "full.json", json.dumps({
        "boot-source": {"kernel_image_path": "/usr/bin/true", "initrd_path": "/usr/bin/true",
                        "boot_args": "console=ttyS0 reboot=k -- init"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": True,
                           "track_dirty_pages": False, "cpu_template": "Baseline",
                           "huge_pages": "None"},
        "drives": [{"drive_id": "data", "path_on_host": "/usr/bin/true", "is_root_device": False,
                    "is_read_only": True, "cache_type": "Writeback", "io_engine": "Sync"},
                   {"drive_id": "rootfs", "path_on_host": "/usr/bin/true",
                    "is_root_device": True, "partuuid": "0eaa91a0-01"}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                "guest_mac": "06:00:ac:10:00:02"},
                               {"iface_id": "eth1", "host_dev_name": "tap1"}],
        "vsock": {"guest_cid": 3, "uds_path": "/run/v.sock"},
        "logger": {"log_path": "/dev/null", "level": "Debug", "show_level": True,
                   "show_log_origin": False},
        "metrics": {"metrics_path": "/dev/null"}}))
    write("vm_config", "bad-vcpus.json",
          '{"boot-source": {"kernel_image_path": "/usr/bin/true"}, '
          '"machine-config": {"vcpu_count": 3, "mem_size_mib": 1, "smt": true}}')


def http_request(method, path, body=None):
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    if body is None:
        return (head + "\r\n").encode()
    b = body.encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n").encode() + b


def api_seeds():
    # Byte 0: bit 7 cuts the stream into chunks, bit 6 sets a payload limit of (bits 0-5) * 4.
    r = http_request
    write("api_http", "get", b"\x00" + r("GET", "/") + r("GET", "/version")
          + r("GET", "/machine-config") + r("GET", "/vm/config"))
    boot = (r("PUT", "/machine-config", '{"vcpu_count": 2, "mem_size_mib": 64}')
            + r("PATCH", "/machine-config", '{"smt": false, "cpu_template": "T2"}')
            + r("PUT", "/boot-source",
                '{"kernel_image_path": "/usr/bin/true", "boot_args": "console=ttyS0"}')
            + r("PUT", "/drives/rootfs", '{"drive_id": "rootfs", "path_on_host": "/usr/bin/true", '
                '"is_root_device": true, "is_read_only": true}')
            + r("PUT", "/network-interfaces/eth0",
                '{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}')
            + r("PUT", "/vsock", '{"guest_cid": 3, "uds_path": "/run/v.sock"}')
            + r("PUT", "/logger", '{"level": "Info"}')
            + r("PUT", "/metrics", '{"metrics_path": "/dev/null"}')
            + r("PUT", "/actions", '{"action_type": "InstanceStart"}')
            + r("PATCH", "/vm", '{"state": "Paused"}')
            + r("PATCH", "/vm", '{"state": "Resumed"}')
            + r("PATCH", "/drives/rootfs", '{"drive_id": "rootfs", "path_on_host": "/usr/bin/true"}')
            + r("PATCH", "/network-interfaces/eth0", '{"iface_id": "eth0"}')
            + r("PUT", "/actions", '{"action_type": "SendCtrlAltDel"}')
            + r("PUT", "/actions", '{"action_type": "FlushMetrics"}')
            + r("GET", "/"))
    write("api_http", "boot", b"\x00" + boot)
    write("api_http", "boot-chunked", b"\x85" + boot)
    write("api_http", "continue", b"\x00"
          + b"PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 38\r\n\r\n"
          + b'{"vcpu_count": 1, "mem_size_mib": 128}'
          + b"GET http://localhost/version?x=1#y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
          + b"GET /machine-config/ HTTP/1.1\r\nConnection: close\r\n\r\n")
    write("api_http", "errors", b"\x00" + r("POST", "/actions", "{}") + r("GET", "/balloon")
          + r("GET", "/drives", "{}") + r("PUT", "/drives", '{"drive_id": "x"}')
          + b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    write("api_http", "too-large",
          b"\x41" + r("PUT", "/boot-source", '{"kernel_image_path": "/usr/bin/true"}'))


def jailer_seeds():
    # Arguments separated by NUL bytes.
    base = ["--id", "vm-1", "--exec-file", "/usr/bin/true", "--uid", "1000", "--gid", "1000",
            "--chroot-base-dir", "/tmp"]
    write("jailer_args", "jail", "\0".join(base))
    write("jailer_args", "jail-full", "\0".join(base + [
        "--new-netns", "--tap", "tap0", "--firewall", "on",
        "--egress-allow", "tcp,10.0.0.0/8,443,80", "--egress-allow", "udp,fd00::/8,53",
        "--cgroup", "pids.max=10", "--cgroup-version", "1", "--parent-cgroup", "kiln/tenants",
        "--parent-cgroup-relative", "--resource-limit", "no-file=64", "--bind-ro", "/usr:/data",
        "--new-pid-ns", "--cleanup-on-exit", "--daemonize", "--timing",
        "--", "--api-sock", "/run/api.sock"]))
    write("jailer_args", "jail-equals", "\0".join([
        "--id=vm-2", "--exec-file=/usr/bin/true", "--uid=1", "--gid=2", "--chroot-base-dir=/tmp",
        "--netns=/proc/self/ns/net", "--bind-rw=/tmp:/scratch", "--userns", "--userfaultfd",
        "--seccomp-policy=/dev/null"]))
    write("jailer_args", "cleanup", "\0".join([
        "cleanup", "--id", "vm-1", "--exec-file", "/usr/bin/true", "--chroot-base-dir", "/tmp"]))
    write("jailer_args", "help", "--help")
    # Regression: an endless profile file was read until the jailer ran out of memory.
    write("jailer_args", "profile-dev-zero", "\0".join(base + ["--profile", "/dev/zero"]))


def profile_seeds():
    # Byte 0: extra flags (see the target), then the profile.
    with open(os.path.join(ROOT, "..", "..", "policies", "tenant", "default.json"), "rb") as f:
        write("tenant_profile", "default", b"\x00" + f.read())
    write("tenant_profile", "full", b"\x03" + json.dumps({
        "cgroup": {"cpu_quota_us": 50000, "cpu_period_us": 100000, "cpuset_cpus": "0-1,3",
                   "cpuset_mems": "0", "memory_bytes": 1048576, "pids_max": 10},
        "rlimits": {"no_file": 64, "fsize": 1, "memlock": 2, "nproc": 3, "core": 0},
        "egress": {"allow": [{"proto": "tcp", "cidr": "10.0.0.0/8", "ports": [443, 80]},
                             {"proto": "udp", "cidr": "fd00::/8", "ports": [53]},
                             {"proto": "icmp", "cidr": "0.0.0.0/0"}]},
        "landlock": {"paths": [{"path": "/run/x", "access": "rw"},
                               {"path": "/data/in", "access": "ro"}],
                     "tcp_connect": [443], "tcp_bind": [8080]}}).encode())
    write("tenant_profile", "egress-flag",
          b"\x05" + b'{"egress": {"allow": [{"proto": "any", "cidr": "192.168.1.0/24"}]}}')


def seccomp_seeds():
    def filt(calls, default="kill_process"):
        return {"default_action": default, "filter_action": "allow", "filter": calls}
    # A VMM filter set (one filter per thread kind), in JSON.
    write("seccomp_policy", "vmm.json", json.dumps({
        "api": filt([{"syscall": "read"},
                     {"syscall": "accept4", "args": [{"index": 3, "type": "dword", "op": "eq",
                                                      "val": 524288, "comment": "SOCK_CLOEXEC"}]}]),
        "vmm": filt([{"syscall": "ioctl", "args": [{"index": 1, "type": "dword",
                                                   "op": {"masked_eq": 65280}, "val": 44544}]},
                     {"syscall": "write"}], "kill_thread"),
        "vcpu": filt([{"syscall": "ioctl", "args": [{"index": 1, "type": "qword", "op": "ge",
                                                    "val": 1}]},
                      {"syscall": "exit"}], "trap")}, indent=1))
    # A jail-level policy: "main" and a filter that answers clone3 with ENOSYS.
    write("seccomp_policy", "jail.json", json.dumps({
        "main": filt([{"syscall": "execve"}, {"syscall": "mkdir"},
                      {"syscall": "clone", "args": [{"index": 0, "type": "qword",
                                                     "op": {"masked_eq": 268435456}, "val": 0}]}]),
        "clone3": {"default_action": "allow", "filter_action": {"errno": 38},
                   "filter": [{"syscall": "clone3"}]}}, indent=1))
    # A compiled set (vmm/src/seccomp/format.rs): ld arch; jeq x86-64; ret allow; ret kill.
    program = [(0x20, 0, 0, 4), (0x15, 0, 1, 0xC000003E), (0x06, 0, 0, 0x7FFF0000),
               (0x06, 0, 0, 0x80000000)]
    out = b"KILN-BPF" + struct.pack("<II", 1, 3)
    for name in ["api", "vmm", "vcpu"]:
        out += bytes([len(name)]) + name.encode() + struct.pack("<I", len(program))
        for code, jt, jf, k in program:
            out += struct.pack("<HBBI", code, jt, jf, k)
    write("seccomp_policy", "compiled.bpf", out)


def vsock_hdr(op, length=0, src_cid=3, dst_cid=2, src_port=1025, dst_port=52, type_=1, flags=0,
              buf_alloc=65536, fwd_cnt=0):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, type_, op,
                       flags, buf_alloc, fwd_cnt)


def vsock_seeds():
    # vsock_packet: u8 CID - 3, u64 payload bytes after the header, the header.
    for name, avail, hdr in [("request", 0, vsock_hdr(1)), ("rw", 5, vsock_hdr(5, 5)),
                             ("rst", 0, vsock_hdr(3, 99, type_=7)),
                             ("truncated", 2, vsock_hdr(5, 4096)),
                             ("shutdown", 0, vsock_hdr(4, flags=3))]:
        write("vsock_packet", name, bytes([0]) + struct.pack("<Q", avail) + hdr)
    write("vsock_packet", "connect-line", bytes([0]) + struct.pack("<Q", 0) + b"CONNECT 52\n")

    # vsock_connection: mode, ports and the REQUEST's credit, then events (see the target).
    def packet(op, payload=b"", flags=0, buf_alloc=65536, fwd_cnt=0, type_=1):
        return bytes([0]) + struct.pack("<HHIIIH", op, type_, flags, buf_alloc, fwd_cnt,
                                        len(payload)) + payload

    def host_write(b):
        return bytes([1]) + struct.pack("<H", len(b)) + b

    def host_read(n):
        return bytes([2]) + struct.pack("<H", n)

    def rx(room):
        return bytes([6]) + struct.pack("<H", room)

    guest = (bytes([0]) + struct.pack("<IIII", 52, 1025, 65536, 0)
             + rx(4096)                       # RESPONSE
             + packet(5, b"hello host")       # RW
             + host_read(100)
             + host_write(b"hello guest") + rx(4096) + rx(4)
             + packet(6, fwd_cnt=11)          # CREDIT_UPDATE
             + packet(7)                      # CREDIT_REQUEST
             + rx(64)
             + packet(4, flags=2)             # SHUTDOWN send
             + bytes([5])                     # writable
             + bytes([3]) + rx(64)            # host shuts down: SHUTDOWN to the guest
             + packet(4, flags=3) + bytes([7]) + struct.pack("<H", 1000))
    write("vsock_connection", "guest-initiated", guest)
    host = (bytes([1]) + struct.pack("<IIII", 1073741824, 52, 0, 0)
            + rx(64)                          # REQUEST
            + packet(2, buf_alloc=256)        # RESPONSE: the host reads OK <port>
            + host_read(64)
            + host_write(b"x" * 300) + rx(8192) + rx(8192)    # beyond the guest's credit
            + packet(5, b"y" * 300) + host_read(400)
            + bytes([4]) + rx(64) + rx(64) + rx(64) + bytes([7]) + struct.pack("<H", 1000))
    write("vsock_connection", "host-initiated", host)


def snapshot_seeds():
    """snapshot_state: a minimal state body (fuzz_targets/snapshot_state.rs): the
    configuration, one memory region, the VM (irqchip, PIT, clock), one vCPU with every KVM
    struct zeroed but a few fields, COM1, the i8042, no virtio device; then the same body as
    a whole state file with a SHA-256 tag (mode 0) and with an HMAC (mode 1, the target's
    key)."""
    import hashlib
    import hmac

    def u32(v):
        return struct.pack("<I", v)

    def blob(b):
        return u32(len(b)) + b

    def pod(size, head=b""):
        return blob(head + bytes(size - len(head)))

    config = json.dumps({
        "boot-source": {"kernel_image_path": "/k", "boot_args": "kiln.test=count"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "drives": [], "network-interfaces": [], "vsock": None,
    }).encode()
    body = blob(config)
    body += u32(1) + struct.pack("<QQ", 0, 64 << 20) + bytes([0])   # one region, no digest
    for chip in (0, 1, 2):
        body += pod(520, u32(chip))                                   # PICs, IOAPIC
    body += pod(112) + pod(48)                                        # PIT, kvmclock
    body += u32(1) + bytes([0])                                       # one vCPU, index 0
    body += u32(1) + pod(40, u32(1))                                  # CPUID: leaf 1
    body += u32(1) + struct.pack("<IQ", 0x10, 1234)                   # MSRs: the TSC
    body += pod(144, struct.pack("<Q", 0) * 16 + struct.pack("<QQ", 0x100000, 2))  # regs
    for size in (312, 4096, 392, 128, 1024, 4, 64):                  # sregs .. events
        body += pod(size)
    body += bytes([1]) + u32(2600000)                                 # TSC kHz
    body += bytes([1]) + bytes(9) + blob(b"") + bytes([0])            # COM1, no bucket
    body += bytes([1]) + bytes([0x45, 3, 0, 0, 0, 0, 0]) + blob(b"") + bytes([0])  # i8042
    body += u32(0)                                                    # no virtio device
    write("snapshot_state", "body", bytes([2]) + body)
    header = b"KILNSNAP" + struct.pack("<HHIQ", 1, 0, 0, len(body))
    write("snapshot_state", "file", bytes([0]) + header + body
          + hashlib.sha256(header + body).digest())
    header = b"KILNSNAP" + struct.pack("<HHIQ", 1, 0, 1, len(body))
    tag = hmac.new(bytes([0x4B] * 32), header + body, hashlib.sha256).digest()
    write("snapshot_state", "file-mac", bytes([1]) + header + body + tag)


def mmds_seeds():
    # mmds_stack: u8 options, then records (see fuzz_targets/mmds_stack.rs).
    def seg(port, flags, seq=None, ack=None, mss=None, payload=b"", flip=0):
        out = bytes([1, port, flags])
        out += bytes([0]) if seq is None else bytes([1]) + struct.pack("<I", seq)
        out += bytes([0]) if ack is None else bytes([1]) + struct.pack("<I", ack)
        out += bytes([0]) if mss is None else bytes([1]) + struct.pack("<H", mss)
        return out + struct.pack("<H", len(payload)) + payload + bytes([flip])
    arp = bytes([2])
    syn = seg(0, 0x02, seq=1000, mss=1460)
    ack = seg(0, 0x10)
    get = bytes([3, 0, 0])
    fin = seg(0, 0x11)
    write("mmds_stack", "arp", bytes([0]) + arp)
    write("mmds_stack", "get", bytes([0]) + arp + syn + ack + get + bytes([3, 0, 1]) + fin)
    write("mmds_stack", "v2-token", bytes([1]) + syn + ack + bytes([3, 0, 2]) + bytes([3, 0, 3])
          + bytes([3, 0, 0]))
    write("mmds_stack", "flood", bytes([0]) + b"".join(seg(i % 4, 0x02, seq=i) for i in range(8)))
    write("mmds_stack", "spoiled", bytes([0]) + seg(0, 0x02, seq=5, mss=1460, flip=40)
          + seg(1, 0x03, seq=5) + bytes([0]) + struct.pack("<H", 20) + bytes(20))
    # mmds_http: u8 options, then the request.
    for name, opts, req in [
        ("get", 0, b"GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("json", 0, b"GET /latest/meta-data HTTP/1.1\r\nAccept: application/json\r\n\r\n"),
        ("token", 1, b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n"),
        ("v2-get", 1, b"GET /latest/ HTTP/1.1\r\n\r\n"),
        ("imds", 3, b"GET //latest//meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: 00\r\n\r\n"),
        ("post", 0, b"POST /x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc"),
    ]:
        write("mmds_http", name, bytes([opts]) + req)


if __name__ == "__main__":
    vm_config_seeds()
    api_seeds()
    jailer_seeds()
    profile_seeds()
    seccomp_seeds()
    virtio_seeds()
    rng_seeds()
    balloon_seeds()
    loader_seeds()
    vsock_seeds()
    snapshot_seeds()
    mmds_seeds()
