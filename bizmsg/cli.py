"""The `bizmsg` command: run all four services, mint development tokens, make dev certificates."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

from bizmsg.kit.auth import Principal, TokenAuthority
from bizmsg.kit.certs import make_dev_certs
from bizmsg.kit.config import PORTS, Settings
from bizmsg.kit.processes import SERVICE_NAMES, ServiceProcess, wait_serving

DEV_PRINCIPALS = ("user:alice", "business:acme", "advertiser:adco", "admin")
# The example call printed by `bizmsg run` (and exercised by the README test).
METHOD = "bizmsg.consent.v1.ConsentService/GetAdPreferences"
BODY = '{"person_id": "alice"}'
AUTH_USER = '-H "authorization: Bearer $TOKEN_USER"'
BUF_FLAGS = "--protocol grpc --http2-prior-knowledge"


def _parse_ttl(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return timedelta(seconds=int(text[:-1]) * units[text[-1]])
    raise argparse.ArgumentTypeError("ttl looks like 30m, 24h or 7d")


def cmd_token(ns: argparse.Namespace) -> int:
    try:
        principal = Principal.parse(ns.principal)
    except ValueError as e:
        print(f"bizmsg token: {e}", file=sys.stderr)
        return 2
    print(TokenAuthority(Settings().token_secret).mint(principal, ttl=ns.ttl))
    return 0


def cmd_certs(ns: argparse.Namespace) -> int:
    for path in make_dev_certs(Path(ns.dir)):
        print(path)
    d = Path(ns.dir).resolve()
    print(
        f"\nexport BIZMSG_TLS_CA={d}/ca.pem BIZMSG_TLS_CERT={d}/<service>.pem "
        f"BIZMSG_TLS_KEY={d}/<service>.key"
    )
    return 0


def usage_text(settings: Settings, tokens: dict[str, str]) -> str:
    lines = ["", "bizmsg is running (SQLite in " + str(settings.data_dir.resolve()) + "):", ""]
    for name in PORTS:
        lines.append(f"  {name:<9} {settings.target(name):<18} {SERVICE_NAMES[name]}")
    lines += ["", "Development tokens (valid 24 h):"]
    for principal, token in tokens.items():
        var = "TOKEN_" + principal.split(":")[0].upper()
        lines.append(f"  export {var}={token}    # {principal}")
    consent = settings.target("consent")
    lines += [
        "",
        "Try it (reflection is on, no proto files needed):",
        f"  grpcurl -plaintext {consent} list",
        f"  grpcurl -plaintext {AUTH_USER} -d '{BODY}' {consent} {METHOD}",
        f"  buf curl {BUF_FLAGS} --list-services http://{consent}",
        f"  buf curl {BUF_FLAGS} {AUTH_USER} -d '{BODY}' http://{consent}/{METHOD}",
        "",
        "Ctrl-C stops all four (each drains its in-flight calls first).",
    ]
    return "\n".join(lines)


def cmd_run(ns: argparse.Namespace) -> int:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs = settings.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[ServiceProcess] = []
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for name in ("consent", "billing", "delivery", "ads"):
            env = {"BIZMSG_TOKEN_SECRET": settings.token_secret.decode()}
            p = ServiceProcess(
                name, {**os.environ, **env}, logs / f"{name}.log", port=settings.port(name)
            )
            procs.append(p.start())
        for p in procs:
            p.wait_serving()
        authority = TokenAuthority(settings.token_secret)
        tokens = {p: authority.mint(p) for p in DEV_PRINCIPALS}
        print(usage_text(settings, tokens), flush=True)
        print(f"Logs: {logs}/<service>.log", flush=True)
        while not stop:
            for p in procs:
                if p.proc is not None and p.proc.poll() is not None:
                    print(f"{p.name} exited with {p.proc.returncode}; stopping", file=sys.stderr)
                    stop = True
            time.sleep(0.2)
    finally:
        for p in procs:
            p.request_stop()  # all drain at once
        codes = [p.terminate() for p in procs]
    return 0 if all(c == 0 for c in codes) else 1


def cmd_health(ns: argparse.Namespace) -> int:
    """Exit 0 when the service at the target reports SERVING (used by compose health checks)."""
    try:
        wait_serving(ns.target, ns.service, timeout=ns.timeout)
    except TimeoutError as e:
        print(f"bizmsg health: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bizmsg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run all four services on the SQLite default").set_defaults(
        func=cmd_run
    )
    tok = sub.add_parser("token", help="print a bearer token for a principal")
    tok.add_argument(
        "principal", help="user:<id>, business:<id>, advertiser:<id>, service:<name> or admin"
    )
    tok.add_argument(
        "--ttl", type=_parse_ttl, default=timedelta(hours=24), help="e.g. 30m, 24h, 7d"
    )
    tok.set_defaults(func=cmd_token)
    certs = sub.add_parser("certs", help="make a development CA and mTLS certificates")
    certs.add_argument("dir")
    certs.set_defaults(func=cmd_certs)
    hc = sub.add_parser("health", help="exit 0 if the service at TARGET is SERVING")
    hc.add_argument("target", help="host:port")
    hc.add_argument("--service", default="", help="a service name; default: the whole server")
    hc.add_argument("--timeout", type=float, default=3.0)
    hc.set_defaults(func=cmd_health)
    bench = sub.add_parser(
        "bench", help="the end-to-end benchmark (bizmsg bench --help)", add_help=False
    )
    bench.set_defaults(func=None)
    ns, rest = parser.parse_known_args(argv)
    if ns.command == "bench":
        from bizmsg.bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    result: int = ns.func(ns)
    return result


if __name__ == "__main__":
    sys.exit(main())
