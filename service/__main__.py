"""`python -m service [--host H] [--port P]`: serve the app with uvicorn."""

from __future__ import annotations

import argparse
import errno
import socket
import sys

import uvicorn

from client.log_setup import configure_logging
from service.api.h11_protocol import JsonErrorH11Protocol
from service.app import create_app
from service.jobs.store import JobsDatabaseError, JobStore
from service.settings import Settings


def port_problem(host: str, port: int) -> str | None:
    """Why the service could not listen on host:port, said before the model loads (uvicorn said
    "ready" first, then "address already in use"), or None."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            why = "is already in use (another liverseg?)" if error.errno == errno.EADDRINUSE else f"cannot be used ({error.strerror})"
            return (
                f"port {port} on {host} {why}. Choose another with LIVERSEG_PORT=8001 (or --port 8001); "
                "LIVERSEG_HOST sets the interface."
            )
    return None


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve liverseg over HTTP.")
    parser.add_argument("--host", default=defaults.host, help=f"interface to bind (default {defaults.host})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"port (default {defaults.port})")
    args = parser.parse_args(argv)
    settings = defaults.model_copy(update={"host": args.host, "port": args.port})
    configure_logging(settings.log_level, log_format=settings.log_format)
    try:  # a damaged jobs database: one line and exit 1, not a traceback from the app's startup
        JobStore(settings.data_dir).close()
    except JobsDatabaseError as error:
        sys.exit(f"liverseg: {error}")
    if problem := port_problem(settings.host, settings.port):
        sys.exit(f"liverseg: {problem}")
    # log_config=None: uvicorn configures no handlers of its own, so its access and error lines
    # go through the root handler above, in the one format and through the patient-data filter.
    # http: h11, its own 400s (headers past its buffer) in the service's JSON body, not a reset.
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None,
        http=JsonErrorH11Protocol,
    )


if __name__ == "__main__":
    main()
