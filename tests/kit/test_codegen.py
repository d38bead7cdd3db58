"""The generated code in bizmsg/ is exactly what protos/generate.py makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generated(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in (root / "bizmsg").rglob("*")
        if p.name.endswith(GENERATED_SUFFIXES)
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh, committed = _generated(tmp_path), _generated(REPO)
    assert fresh, "no code was generated"
    missing = sorted(set(fresh) - set(committed))
    stale = sorted(set(committed) - set(fresh))
    changed = sorted(k for k in fresh.keys() & committed.keys() if fresh[k] != committed[k])
    hint = "run: python protos/generate.py"
    assert not missing, f"generated files missing ({hint}): {missing}"
    assert not stale, f"generated files without a proto: {stale}"
    assert not changed, f"generated files out of date ({hint}): {changed}"


def test_every_service_package_imports() -> None:
    import importlib

    for proto in sorted((REPO / "protos" / "bizmsg").rglob("*.proto")):
        rel = proto.relative_to(REPO / "protos").with_suffix("")
        importlib.import_module(".".join(rel.parts) + "_pb2")
