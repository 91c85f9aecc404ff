"""The floor under "server CPU per delivery": what one small TCP send over loopback costs this machine.

Every delivery the live writer makes at sparse rates is one ``send`` of one SSE chunk (~300 bytes) to
one socket; on loopback the kernel also does the receiving side's TCP work inside that call. No server
can deliver below that per send, whatever its language; this measures it in the same conditions as
``bench/run.py`` (Python ``socket.send``, TCP_NODELAY, receivers drained between rounds), so a
per-delivery figure can be read as a multiple of it.

    python bench/send_floor.py [--sockets 500] [--rounds 200] [--size 300]
"""

from __future__ import annotations

import argparse
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--size", type=int, default=300, help="bytes per send (an SSE chunk of one event)")
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


if __name__ == "__main__":
    main()
