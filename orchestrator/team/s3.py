"""``python -m orchestrator.team.s3 --port P``: moto's S3 API server on 127.0.0.1, in the
foreground until SIGTERM or SIGINT (``servers.start_s3`` runs it as a child process)."""

from __future__ import annotations

import argparse
import signal
import threading


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    server.start()
    try:
        stopped.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
