"""Fresh ids for h2load: an LD_PRELOAD shim that stamps every request body as h2load reads it.

h2load posts one body file for every request. Mutating RPCs need a new request_id per call
(a repeated id is an idempotent replay, which answers from the idempotency table and skips the
real work), and spreading calls over many recipients keeps one hot row from being what is
measured. h2load reads the body with pread() once per request, so the shim overwrites two
fixed-width markers in the buffer it just read: REQUEST_MARKER with a 12-digit request number
and PICK_MARKER with that number modulo BIZMSG_BENCH_PICK (6 digits). The sizes stay the same,
so the gRPC frame prefix and content-length stay valid. Cost: one memmem per request.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

REQUEST_MARKER = b"@@@@@@@@@@@@"
PICK_MARKER = b"######"

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static ssize_t (*real_pread)(int, void *, size_t, off_t);
static unsigned long long next_number;
static unsigned long long pick_modulo;

static void stamp(char *buf, size_t len, const char *marker, size_t width,
                  unsigned long long value) {
    char *at = memmem(buf, len, marker, width);
    if (at == NULL) return;
    char digits[32];
    snprintf(digits, sizeof digits, "%0*llu", (int)width, value);
    memcpy(at, digits + strlen(digits) - width, width);
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    if (real_pread == NULL) {
        real_pread = dlsym(RTLD_NEXT, "pread");
        const char *pick = getenv("BIZMSG_BENCH_PICK");
        pick_modulo = pick ? strtoull(pick, NULL, 10) : 0;
    }
    ssize_t n = real_pread(fd, buf, count, offset);
    if (n > 0 && offset == 0 && memmem(buf, (size_t)n, "@@@@@@@@@@@@", 12) != NULL) {
        unsigned long long number = next_number++;
        if (pick_modulo > 0)
            stamp(buf, (size_t)n, "######", 6, number % pick_modulo);
        stamp(buf, (size_t)n, "@@@@@@@@@@@@", 12, number);
    }
    return n;
}
"""


def build(cache_dir: Path | None = None) -> Path | None:
    """Compiles the shim once (cached by source hash); None when no C compiler is available."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    directory = cache_dir or Path(tempfile.gettempdir()) / "bizmsg-bench"
    directory.mkdir(parents=True, exist_ok=True)
    lib = directory / f"stamp-{digest}.so"
    if lib.exists():
        return lib
    src = directory / f"stamp-{digest}.c"
    src.write_text(SOURCE)
    tmp = lib.with_suffix(".tmp")
    result = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    tmp.replace(lib)
    return lib
