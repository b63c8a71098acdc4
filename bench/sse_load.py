"""The SSE load generator: raw-socket clients spread over worker processes.

Why not asyncio clients in the bench process: one Python event loop reading 10,000 sockets
spends ~7 µs per frame, so at 100,000 frames/s it needs most of a core, and a frame's
measured latency includes the wait for that loop to reach its socket — the generator
measured itself. Here:

- each worker process holds its share of the clients on non-blocking sockets in one epoll;
- every socket asks the kernel for receive timestamps (SO_TIMESTAMPNS), so a frame's latency
  is taken when its bytes reached the client's socket (commit stamp -> kernel receive time),
  whenever this process gets round to reading them;
- bulk clients are drained in sweeps every `drain` seconds — one recv per client per sweep
  whatever the event rate — and sample the latency of the last frame of each read;
- probe clients are read as soon as they are readable and also stamp the parse time, so
  parse - kernel time is the generator's own lag (what a Python asyncio client would add).

Every client keeps the ids it received: the parent counts those in the measured seq window
per client (each must have exactly its tenant's events there, strictly increasing).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import re
import resource
import select
import socket
import struct
import time
from array import array
from dataclasses import dataclass, field

SO_TIMESTAMPNS = 35  # Linux (asm-generic); SCM_TIMESTAMPNS has the same value
_TIMESPEC = struct.Struct("qq")
_ANC = socket.CMSG_SPACE(_TIMESPEC.size)
_ID = re.compile(rb"(?m)^id: (\d+)$")
_T = re.compile(rb'"t": ?([0-9.]+)')  # a live frame's data is PostgreSQL's text: '"t": 1.5'
_RECV = 65536
_SEGS_IN = struct.Struct("I")


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    tenant: int
    probe: bool
    headers: bool = False
    closed: bool = False
    tail: bytes = b""
    ids: array = field(default_factory=lambda: array("q"))
    # (seq, commit -> kernel receive ms) of the last frame of each read; probes also parse ms
    seqs: array = field(default_factory=lambda: array("q"))
    kernel_ms: array = field(default_factory=lambda: array("d"))
    parse_ms: array = field(default_factory=lambda: array("d"))


def _kernel_time(anc: list) -> float | None:
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec + nsec * 1e-9
    return None


def _read(c: _Conn) -> bool:
    """Read what is there; False when there was nothing (or the connection is done)."""
    try:
        data, anc, _, _ = c.sock.recvmsg(_RECV, _ANC)
    except BlockingIOError:
        return False
    except OSError:
        c.closed = True
        return False
    now = time.time()
    if not data:
        c.closed = True
        return False
    buf = c.tail + data if c.tail else data
    if not c.headers:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            c.tail = buf
            return True
        if not buf.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
            raise RuntimeError(buf[:200].decode(errors="replace"))
        c.headers = True
        buf = buf[end + 4 :]
    end = buf.rfind(b"\n\n")
    if end < 0:
        c.tail = buf
        return True
    complete, c.tail = buf[:end], buf[end + 2 :]
    ids = _ID.findall(complete)
    if not ids:
        return True
    c.ids.extend(map(int, ids))
    kernel = _kernel_time(anc)
    if c.tail or kernel is None:
        return True  # the read ended inside a frame: its time is not the last frame's
    m = _T.search(complete, complete.rfind(b"\nid: ") + 1)
    if m is None:
        return True
    t = float(m.group(1))
    c.seqs.append(c.ids[-1])
    c.kernel_ms.append((kernel - t) * 1000)
    if c.probe:
        c.parse_ms.append((now - t) * 1000)
    return True


def _segments_in(conns: dict[int, _Conn]) -> int:
    """TCP segments the clients received so far: the server's writes (one per write on
    loopback with TCP_NODELAY, for writes under the MSS) — counted by the kernel."""
    total = 0
    for c in conns.values():
        with contextlib.suppress(OSError):
            info = c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            total += _SEGS_IN.unpack_from(info, 140)[0]  # struct tcp_info.tcpi_segs_in
    return total


def _connect(port: int, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.sendall(
        f"GET /v1/events HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Accept: text/event-stream\r\n\r\n".encode()
    )
    sock.setblocking(False)
    return sock


def worker(
    pipe: multiprocessing.connection.Connection,
    port: int,
    clients: list[tuple[str, int, bool]],
    drain: float,
) -> None:
    """Hold `clients` ((token, tenant index, probe)) until told to stop, then report."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, len(clients) + 256)), hard))
    probes_ep, bulk_ep = select.epoll(), select.epoll()
    conns: dict[int, _Conn] = {}
    batch = 100  # connect a batch, wait for its headers: the server's accept backlog is finite
    for start in range(0, len(clients), batch):
        pending = []
        for token, tenant, probe in clients[start : start + batch]:
            c = _Conn(_connect(port, token), tenant, probe)
            conns[c.sock.fileno()] = c
            (probes_ep if probe else bulk_ep).register(c.sock.fileno(), select.EPOLLIN)
            pending.append(c)
        deadline = time.monotonic() + 60
        while not all(c.headers for c in pending):
            if time.monotonic() > deadline:
                raise TimeoutError("SSE clients did not get their response headers")
            for ep in (probes_ep, bulk_ep):
                for fd, _ in ep.poll(0.01):
                    _read(conns[fd])
    pipe.send("connected")

    cpu0 = cpu = 0.0
    segs0 = segs = 0
    pipe_fd = pipe.fileno()
    probes_ep.register(pipe_fd, select.EPOLLIN)
    next_sweep = time.monotonic() + drain
    window = None
    while window is None:
        for fd, _ in probes_ep.poll(max(0.0, next_sweep - time.monotonic())):
            if fd == pipe_fd:
                msg = pipe.recv()
                if msg == "measure":
                    segs0 = _segments_in(conns)
                    cpu0 = time.process_time()
                elif msg == "measured":
                    cpu = time.process_time() - cpu0
                    segs = _segments_in(conns) - segs0
                else:
                    window = msg
            elif not _read(conns[fd]) and conns[fd].closed:
                probes_ep.unregister(fd)
        if time.monotonic() >= next_sweep:
            for fd, _ in bulk_ep.poll(0):
                if not _read(conns[fd]) and conns[fd].closed:
                    bulk_ep.unregister(fd)
            next_sweep += drain
    for c in conns.values():  # the last sweep: everything that is there
        while not c.closed and _read(c):
            pass
    lo, hi = window
    pipe.send(_summary(list(conns.values()), lo, hi, cpu) | {"segments": segs})
    for c in conns.values():
        c.sock.close()


def _summary(conns: list[_Conn], lo: int, hi: int, cpu: float) -> dict:
    """Per client: events in [lo, hi] and whether its ids only ever increased."""
    counts, ordered = [], 0
    kernel, parse = [], []
    for c in conns:
        ids = c.ids
        ordered += all(a < b for a, b in itertools.pairwise(ids))
        counts.append((c.tenant, sum(1 for i in ids if lo <= i <= hi)))
        for seq, k in zip(c.seqs, c.kernel_ms, strict=True):
            if lo <= seq <= hi:
                kernel.append(k)
        if c.probe:
            parse += [
                p - k
                for seq, k, p in zip(c.seqs, c.kernel_ms, c.parse_ms, strict=True)
                if lo <= seq <= hi
            ]
    return {
        "counts": counts,
        "ordered": ordered,
        "closed": sum(c.closed for c in conns),
        "kernel_ms": kernel,
        "lag_ms": parse,  # parse time - kernel receive time, per probe read
        "probe_ms": [
            p
            for c in conns
            if c.probe
            for seq, p in zip(c.seqs, c.parse_ms, strict=True)
            if lo <= seq <= hi
        ],
        "cpu_s": cpu,
    }


@dataclass
class Generator:
    """The worker processes and their pipes."""

    procs: list[multiprocessing.Process]
    pipes: list[multiprocessing.connection.Connection]

    @classmethod
    def start(
        cls, port: int, tokens: list[str], clients: int, probes: int, processes: int, drain: float
    ) -> Generator:
        step = max(1, clients // max(1, probes))  # probes spread over the connection order
        specs = [(tokens[i % len(tokens)], i % len(tokens), i % step == 0) for i in range(clients)]
        ctx = multiprocessing.get_context("spawn")
        procs, pipes = [], []
        for k in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child, port, specs[k::processes], drain))
            proc.start()
            procs.append(proc)
            pipes.append(parent)
        return cls(procs, pipes)

    def wait_connected(self, timeout: float) -> None:
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError("the load generator did not connect its clients")
            if (msg := pipe.recv()) != "connected":
                raise RuntimeError(msg)

    def measure(self, start: bool = True) -> None:
        """Start (or end) the window the workers' CPU time is counted over."""
        for pipe in self.pipes:
            pipe.send("measure" if start else "measured")

    def stop(self, lo: int, hi: int) -> list[dict]:
        for pipe in self.pipes:
            pipe.send((lo, hi))
        out = [pipe.recv() for pipe in self.pipes]
        for proc in self.procs:
            proc.join(30)
        return out

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.join(5)
