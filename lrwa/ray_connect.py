"""Joining Ray: a cluster that cannot be reached is refused in one line, within seconds.

Left to itself, `ray.init` on an address nobody answers retries for minutes while Ray's
C++ client floods stderr, a `ray://` address ends in a long traceback, and a head that
wants an authentication token gives 20 s of retries and then a traceback that never says
`RAY_AUTH_MODE=token`. So before `ray.init` joins a cluster (an address given, or
RAY_ADDRESS), the address is probed: a TCP connection first (refused, unresolvable or
silent within `CONNECT_TIMEOUT_S`), then, for a GCS address, one read from the GCS with
this process's authentication settings. Each failure is an `LrwaError` naming the address
and the fix. This is the one module that touches Ray's private GCS client for it.

After `ray.init`, SIGTERM and SIGHUP are made to stop the driver as Ctrl+C does
(`lrwa.signals`), because `ray.init` installs its own SIGTERM handler, which exits; and a
lost node is one console line, not the tail of its raylet's log (`quiet_node_reports`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from lrwa.errors import LrwaError, first_line
from lrwa.signals import stop_like_ctrl_c

CONNECT_TIMEOUT_S = 5.0
GCS_TIMEOUT_S = 5.0  # the C++ client tries about 3 times that before it gives up
ADDRESS_ENV = "RAY_ADDRESS"
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001
# Addresses that make ray.init start or find a cluster on this machine: nothing to probe.
LOCAL_ADDRESSES = (None, "", "local", "auto")
TOKEN_FIX = ("the head runs with token authentication: set RAY_AUTH_MODE=token and give "
             "this machine the head's token (`ray get-auth-token` on the head) in "
             "~/.ray/auth_token or RAY_AUTH_TOKEN")


def target_address(address: str | None) -> str | None:
    """The address `ray.init(address)` will join: the argument, else RAY_ADDRESS."""
    if address in (None, "auto") and os.environ.get(ADDRESS_ENV):
        return os.environ[ADDRESS_ENV]
    return address


def _named(address: str, given: str | None) -> str:
    return address if given not in LOCAL_ADDRESSES else f"{address} (RAY_ADDRESS)"


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise LrwaError(f"Ray address {address!r} has no valid port; use HOST:PORT, "
                        f"e.g. 10.0.0.5:{DEFAULT_GCS_PORT}") from None


def _check_port(host: str, port: int, shown: str, kind: str) -> None:
    """A TCP connection to the head, or an LrwaError saying why there is none."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return
    except socket.gaierror:
        why = f"the host name {host!r} does not resolve"
    except ConnectionRefusedError:
        why = f"nothing listens on port {port} (connection refused)"
    except TimeoutError:
        why = f"no answer within {CONNECT_TIMEOUT_S:g} s (a firewall, or the wrong host)"
    except OSError as error:
        why = error.strerror or str(error)
    raise LrwaError(f"cannot reach the Ray cluster at {shown}: {why}; check the head's "
                    f"address and its {kind}, or unset RAY_ADDRESS to run Ray on this "
                    "machine")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ GCS client logs each failed attempt to file descriptor 2 itself; during
    the probe the error raised says it all, in one line."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_gcs(address: str, shown: str) -> None:
    """One read from the GCS with this process's authentication, as ray.init would send it."""
    import ray.exceptions

    from lrwa.tune.internals import standalone_gcs_client

    # As ray.init joining an explicit address: token mode only where RAY_AUTH_MODE=token
    # (a token in ~/.ray/auth_token alone is not sent).
    try:
        with _quiet_stderr():
            client = standalone_gcs_client(address, int(1000 * GCS_TIMEOUT_S))
            client.internal_kv_get(b"probe", b"lrwa", timeout=GCS_TIMEOUT_S)
    except ray.exceptions.AuthenticationError:
        raise LrwaError(f"the Ray cluster at {shown} refused this driver's authentication "
                        f"token; {TOKEN_FIX}") from None
    except ray.exceptions.RayError as error:
        raise LrwaError(f"{shown} answers but not as a Ray cluster's GCS "
                        f"({first_line(error)}); give the head's GCS address, port "
                        f"{DEFAULT_GCS_PORT} unless `ray start --head --port` chose another "
                        "(not the dashboard's 8265)") from None


def check_reachable(address: str | None) -> None:
    """Refuse, in one LrwaError, an address to join that is not a reachable Ray cluster."""
    target = target_address(address)
    if target in LOCAL_ADDRESSES:
        return
    shown = _named(target, address)
    scheme, _, rest = target.partition("://")
    if not rest:
        host, port = _host_port(target, DEFAULT_GCS_PORT)
        _check_port(host, port, shown, f"GCS port ({DEFAULT_GCS_PORT} unless `ray start "
                                       "--head --port` chose another)")
        _check_gcs(target, shown)
    elif scheme == "ray":
        host, port = _host_port(rest.split("/")[0], DEFAULT_CLIENT_PORT)
        _check_port(host, port, shown, f"Ray Client port ({DEFAULT_CLIENT_PORT} unless "
                                       "`ray start --head --ray-client-server-port` chose "
                                       "another)")
    elif scheme in ("http", "https"):
        raise LrwaError(f"{shown} is an HTTP address (the dashboard's job API, for `ray job "
                        "submit`); lrwa joins a cluster at its GCS address HOST:6379 or "
                        "ray://HOST:10001")


def connect_ray(address: str | None = None, **init_args: Any) -> None:
    """`ray.init(address, **init_args)` after `check_reachable`; what still fails to connect
    is an LrwaError too. Afterwards SIGTERM and SIGHUP act as Ctrl+C."""
    import ray
    import ray.exceptions

    # The notice that token authentication is on is printed at every start; it is not a
    # problem to act on.
    from lrwa.tune.internals import AUTH_NOTICE_LOGGER

    logging.getLogger(AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
    check_reachable(address)
    target = target_address(address)
    try:
        ray.init(address=address, **init_args)
    except ray.exceptions.AuthenticationError:
        raise LrwaError(f"the Ray cluster at {target} refused this driver's authentication "
                        f"token; {TOKEN_FIX}") from None
    except (ConnectionError, ray.exceptions.RayError) as error:
        if target in LOCAL_ADDRESSES:
            raise
        raise LrwaError(f"cannot join the Ray cluster at {_named(target, address)}: "
                        f"{first_line(error)}") from None
    stop_like_ctrl_c()
    quiet_node_reports()


# What a node's agent publishes when its raylet dies: a line of reasons and then the tail of
# the raylet's log (the "[state-dump]" lines), 25 or so console lines per lost node.
NODE_LOST = "Raylet is terminated."


def quiet_node_reports() -> None:
    """Print one line for a lost node instead of the raylet's log tail that Ray's driver
    prints for it (its error listener prints to the console whatever `log_to_driver` says;
    Ray Tune then restarts the node's trials from their checkpoints, which lrwa reports)."""
    from lrwa.tune.internals import wrap_console_printer

    def quieter(original: Any) -> Any:
        if getattr(original, "lrwa_quiet", False):
            return original

        def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
            lines = data.get("lines") or []
            if data.get("pid") == "raylet" and any(NODE_LOST in str(line) for line in lines):
                sys.stderr.write("ray: a node was lost (its raylet ended); its trials are "
                                 "restarted from their last checkpoints\n")
                return
            original(data, ignore_prefix)

        print_to_stdstream.lrwa_quiet = True  # type: ignore[attr-defined]
        return print_to_stdstream

    wrap_console_printer(quieter)
