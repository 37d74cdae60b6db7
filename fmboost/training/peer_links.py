"""Links that tell at once, on any node, that a rank's process died, and how.

Rank 0 listens on a port of its own (published in the job's rendezvous store); every other rank
connects to it and says who it is (rank, node, pid). When a process ends, its kernel closes its
sockets, so the other end of its link reads the end of the stream at once: a rank killed with SIGKILL
(the out-of-memory killer, ``scancel --signal=KILL``) is known to be dead within milliseconds, on another
node too, where a stopped one (SIGSTOP, a hung GPU) keeps its link open and is left to the stall watchdog
(:mod:`.watchdog`). A rank that ends on purpose says goodbye first (``finished``, or the error it raises),
so the end of its link is not taken for a death. Each rank's ``faulthandler`` writes to its link, so a
rank that crashes in native code (a segmentation fault, an abort) is named with the fatal error it printed.

Rank 0 decides what a closed link means and sends every other rank the same verdict; when rank 0 itself
dies, every other rank sees its link close and names it. Messages are JSON lines.
"""

import contextlib
import faulthandler
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

ADDRESS_KEY = "fmboost/links/address"
CONNECT_SECONDS = 120.0


def node_name() -> str:
    """The node as the cluster names it (Slurm's node name, else the host name)."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


@dataclass(frozen=True)
class Peer:
    rank: int
    node: str
    pid: int


@dataclass(frozen=True)
class LinkEnd:
    """How a rank's link ended: ``goodbye`` is what it said first (None: nothing, it died); ``output`` is
    anything else it wrote (a fatal error from faulthandler)."""

    peer: Peer
    goodbye: dict | None
    output: str


def message(**fields) -> bytes:
    return (json.dumps(fields) + "\n").encode()


class PeerLinks:
    """This rank's side of the links. ``on_end(LinkEnd)`` is called (on the links' thread) when a peer's link
    ends; ``on_verdict(dict)`` when rank 0 sends a verdict (ranks other than 0)."""

    def __init__(
        self,
        store,
        rank: int,
        world_size: int,
        address: str,
        on_end: Callable[[LinkEnd], None],
        on_verdict: Callable[[dict], None],
    ) -> None:
        self.store, self.rank, self.world_size, self.address = store, rank, world_size, address
        self.on_end, self.on_verdict = on_end, on_verdict
        self.me = Peer(rank, node_name(), os.getpid())
        self.rank_zero = self.me  # other ranks learn who rank 0 is when they link
        self.closing = threading.Event()
        self.lock = threading.Lock()
        self.peers: dict[socket.socket, Peer] = {}  # rank 0: each link by its socket
        self.pending: dict[socket.socket, bytes] = {}
        self.link: socket.socket | None = None  # other ranks: the link to rank 0

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Rank 0: listen and publish where; others: connect and say who they are. Returns once linked."""
        if self.rank == 0:
            self.listener = socket.create_server(("", 0), backlog=max(16, self.world_size))
            where = {"host": self.address, "port": self.listener.getsockname()[1], "node": self.me.node}
            self.store.set(ADDRESS_KEY, json.dumps(where | {"pid": self.me.pid}))
            thread = threading.Thread(target=self.serve, name="fmboost-links", daemon=True)
        else:
            self.store.wait([ADDRESS_KEY])
            where = json.loads(self.store.get(ADDRESS_KEY))
            self.rank_zero = Peer(0, where["node"], where["pid"])
            self.link = socket.create_connection((where["host"], where["port"]), timeout=CONNECT_SECONDS)
            self.link.settimeout(None)
            self.link.sendall(message(hello=self.rank, node=self.me.node, pid=self.me.pid))
            self.crash_output = self.link.makefile("w")
            faulthandler.enable(file=self.crash_output)
            thread = threading.Thread(target=self.listen, name="fmboost-links", daemon=True)
        thread.start()

    # ------------------------------------------------------------------ rank 0
    def serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        while not self.closing.is_set():
            for key, _ in selector.select(timeout=0.5):
                if key.fileobj is self.listener:
                    connection, _ = self.listener.accept()
                    self.pending[connection] = b""
                    selector.register(connection, selectors.EVENT_READ)
                    continue
                connection = key.fileobj
                data = connection.recv(65536)
                if data:
                    self.pending[connection] += data
                    self.read_hello(connection)
                    continue
                selector.unregister(connection)
                self.ended(connection)

    def read_hello(self, connection: socket.socket) -> None:
        if connection in self.peers or b"\n" not in self.pending[connection]:
            return
        line, rest = self.pending[connection].split(b"\n", 1)
        hello = json.loads(line)
        with self.lock:
            self.peers[connection] = Peer(hello["hello"], hello["node"], hello["pid"])
        self.pending[connection] = rest

    def ended(self, connection: socket.socket) -> None:
        """A link closed: what the peer said last decides what it means."""
        with self.lock:
            peer = self.peers.pop(connection, None)
        data = self.pending.pop(connection, b"").decode(errors="replace")
        connection.close()
        if peer is None or self.closing.is_set():
            return
        goodbye, output = None, []
        for line in data.splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "goodbye" in parsed:
                goodbye = parsed
            elif line.strip():
                output.append(line)
        self.on_end(LinkEnd(peer, goodbye, "\n".join(output)))

    def send_to_every_rank(self, data: bytes) -> None:
        """Rank 0: ``data`` down every link still open (a rank whose link is gone misses it)."""
        with self.lock:
            connections = list(self.peers)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.sendall(data)

    def send_verdict(self, verdict: dict) -> None:
        self.send_to_every_rank(message(verdict=verdict))

    # ------------------------------------------------------------------ other ranks
    def listen(self) -> None:
        buffer = b""
        while True:
            try:
                data = self.link.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not self.closing.is_set():
                    self.on_end(LinkEnd(self.rank_zero, None, ""))
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                parsed = json.loads(line)
                if "verdict" in parsed:
                    self.on_verdict(parsed["verdict"])
                elif "goodbye" in parsed and not self.closing.is_set():
                    self.closing.set()  # rank 0 ends on purpose, finished or with an error
                    if parsed["goodbye"] != "finished":
                        self.on_end(LinkEnd(self.rank_zero, parsed, ""))

    # ------------------------------------------------------------------ both
    def say_goodbye(self, why: str, error: str | None = None, user_error: bool = False) -> None:
        """Before this rank ends on purpose: its peers must not take the end of its link for a death."""
        self.closing.set()
        goodbye = message(goodbye=why, error=error, user_error=user_error)
        if self.rank == 0:
            self.send_to_every_rank(goodbye)
        elif self.link is not None:
            faulthandler.disable()
            with contextlib.suppress(OSError):
                self.link.sendall(goodbye)


def wait_for_peers(links: PeerLinks, seconds: float = CONNECT_SECONDS) -> None:
    """Rank 0: until every other rank is linked (or ``seconds`` pass: a rank that never links is left to
    the stall watchdog)."""
    deadline = time.monotonic() + seconds
    while links.rank == 0 and len(links.peers) < links.world_size - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
