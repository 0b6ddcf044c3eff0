#!/usr/bin/env python3
"""A TCP forwarder that can be switched into black-hole mode.

    blackhole.py LISTEN_HOST:PORT UPSTREAM_HOST:PORT

Forwards every connection to the upstream. SIGUSR1 switches black-hole mode
on: new connections are accepted and never answered, and bytes on open
connections are swallowed in both directions (a path cut somewhere in the
network, not a refused connection). SIGUSR2 switches it off again; connections
opened during the cut stay dead. Prints "ready" once listening and a line on
every switch.
"""
import signal
import socket
import sys
import threading

BLACKHOLE = threading.Event()


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if BLACKHOLE.is_set() or dst is None:
                continue  # swallowed
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client, upstream):
    if BLACKHOLE.is_set():
        # Accept, read and discard, never answer.
        pump(client, None)
        client.close()
        return
    try:
        server = socket.create_connection(upstream, timeout=5)
        server.settimeout(None)
    except OSError:
        client.close()
        return
    t = threading.Thread(target=pump, args=(server, client), daemon=True)
    t.start()
    pump(client, server)
    t.join()
    client.close()
    server.close()


def main():
    listen_host, listen_port = sys.argv[1].rsplit(":", 1)
    up_host, up_port = sys.argv[2].rsplit(":", 1)
    upstream = (up_host, int(up_port))

    def on(_sig, _frame):
        BLACKHOLE.set()
        print("black-hole mode ON", flush=True)

    def off(_sig, _frame):
        BLACKHOLE.clear()
        print("black-hole mode OFF", flush=True)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.create_server((listen_host, int(listen_port)), reuse_port=False)
    listener.listen(128)
    print("ready", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, upstream), daemon=True).start()


if __name__ == "__main__":
    main()
