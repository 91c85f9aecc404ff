"""The floor under "server CPU per delivery": what one small TCP send over loopback costs this machine.

Every delivery the live writer makes at sparse rates is one ``send`` of one SSE chunk (~300 bytes) to
one socket; on loopback the kernel also does the receiving side's TCP work inside that call. No server
can deliver below that per send, whatever its language; this measures it in the same conditions as
``bench/run.py`` (Python ``socket.send``, TCP_NODELAY, receivers drained between rounds), so a
per-delivery figure can be read as a multiple of it.

    python bench/send_floor.py [--sockets 500] [--rounds 200] [--size 300]

With ``--receiver`` the receiving ends are read by a second process parked in ``epoll_wait`` (as a load
generator or a browser is), and each round sends to ``--burst`` sockets then pauses 1 ms (a live writer's
tick at sparse rates): a send then also wakes that process, inside the sender's system call.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--size", type=int, default=300, help="bytes per send (an SSE chunk of one event)")
    parser.add_argument("--receiver", action="store_true", help="a process parked in epoll_wait reads the other ends")
    parser.add_argument("--burst", type=int, default=10, help="with --receiver: sends per round, then 1 ms pause")
    args = parser.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(args.sockets)
    pairs = []
    for _ in range(args.sockets):
        client = socket.create_connection(listener.getsockname())
        server, _address = listener.accept()
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.setblocking(False)
        client.setblocking(False)
        pairs.append((server, client))
    data = b"x" * args.size
    if args.receiver:
        measure_with_receiver(pairs, data, args.rounds, args.burst)
        return
    sending = 0.0
    for _ in range(args.rounds):
        started = time.process_time()
        for server, _client in pairs:
            server.send(data)
        sending += time.process_time() - started
        for _server, client in pairs:  # not timed: the receivers read what they got
            try:
                while client.recv(1 << 16):
                    pass
            except BlockingIOError:
                pass
    sends = args.rounds * args.sockets
    print("| sends | bytes each | CPU µs per send (sender's process, kernel included) |")
    print("|---|---|---|")
    print(f"| {sends} | {args.size} | {sending / sends * 1e6:.2f} |")
    for server, client in pairs:
        server.close()
        client.close()
    listener.close()


Pairs = list[tuple[socket.socket, socket.socket]]


def measure_with_receiver(pairs: Pairs, data: bytes, rounds: int, burst: int) -> None:
    """Sends while a child process, parked in epoll_wait, reads the receiving ends as data arrives."""
    child = os.fork()
    if child == 0:  # the receiver: read whatever arrives until the sender closes
        for server, _client in pairs:
            server.close()
        poller = select.epoll()
        by_fd = {client.fileno(): client for _server, client in pairs}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        open_count = len(by_fd)
        while open_count:
            for fd, _event in poller.poll():
                try:
                    if not by_fd[fd].recv(1 << 16):
                        poller.unregister(fd)
                        open_count -= 1
                except BlockingIOError:
                    pass
        os._exit(0)
    for _server, client in pairs:
        client.close()
    servers = [server for server, _client in pairs]
    sends, sending, at = 0, 0.0, 0
    for _ in range(rounds * len(servers) // burst):
        started = time.process_time()
        for _ in range(burst):
            servers[at].send(data)
            at = (at + 1) % len(servers)
        sending += time.process_time() - started
        sends += burst
        time.sleep(0.001)
    for server in servers:
        server.close()
    os.waitpid(child, 0)
    print("| sends | bytes each | sends per round (1 ms apart) | CPU µs per send, a receiver parked in epoll_wait |")
    print("|---|---|---|---|")
    print(f"| {sends} | {len(data)} | {burst} | {sending / sends * 1e6:.2f} |")


if __name__ == "__main__":
    main()
