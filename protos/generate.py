"""Generate the Python code for every .proto under protos/ into the bizmsg package.

One script, used by developers and by the test that checks the generated code is
current: `python protos/generate.py` writes into the repository; with `--out DIR`
it writes elsewhere (the check compares the two trees).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
# mypy-protobuf's plugins are installed beside the interpreter running this script.
BIN = Path(sys.executable).parent
WELL_KNOWN = Path(grpc_tools.__file__).resolve().parent / "_proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> None:
    files = proto_files()
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={WELL_KNOWN}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(f.relative_to(PROTO_ROOT)) for f in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Make every generated directory an importable package (bizmsg.<service>.v1).
    for f in files:
        pkg = out / f.relative_to(PROTO_ROOT).parent
        while pkg != out and pkg != out / "bizmsg":
            init = pkg / "__init__.py"
            if not init.exists():
                init.write_text("")
            pkg = pkg.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: repo)")
    ns = parser.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    generate(ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
