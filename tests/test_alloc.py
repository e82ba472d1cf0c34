"""keras_seg._alloc: importing keras_seg turns off glibc's per-step mmap/munmap and trimming."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run after `import keras_seg` (or a given module) in a fresh process: allocate and free a
# 64 MiB block and report what glibc did with it (mallinfo2: hblks = live mmapped blocks,
# fordblks = free bytes kept in the heap).
PROBE = r"""
import ctypes, json, sys
import importlib
importlib.import_module(sys.argv[1])
from keras_seg import _alloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2()
p = libc.malloc(64 << 20)
during = libc.mallinfo2()
libc.free(p)
after = libc.mallinfo2()
print(json.dumps({"applied": _alloc.applied(), "mmapped_blocks": during.hblks - before.hblks,
                  "free_kept_mb": after.fordblks / 2**20}))
"""


def _probe(module="keras_seg", **env):
    full_env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    full_env.pop("KERAS_SEG_ALLOCATOR", None)
    full_env.update(env)
    proc = subprocess.run([sys.executable, "-c", PROBE, module], env=full_env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="the allocator settings are glibc's")


@glibc
# Entry points import keras_seg.<module>; data_prep's TensorFlow paths import keras_seg.data first.
@pytest.mark.parametrize("module", ["keras_seg", "keras_seg.train", "keras_seg.data.features"])
def test_import_keeps_large_blocks_in_the_heap(module):
    got = _probe(module)
    assert got["applied"] == "tuned"
    assert got["mmapped_blocks"] == 0, got  # glibc's default mmaps a 64 MiB block
    assert got["free_kept_mb"] >= 64, got  # and with trimming on, the freed top of the heap goes back to the kernel


@glibc
def test_opt_out_keeps_glibc_defaults():
    got = _probe(KERAS_SEG_ALLOCATOR="system")
    assert got["applied"] == "system"
    assert got["mmapped_blocks"] == 1, got
    assert got["free_kept_mb"] < 64, got


def test_bad_value_is_refused_with_the_fix():
    env = dict(os.environ, PYTHONPATH=REPO, KERAS_SEG_ALLOCATOR="jemalloc")
    proc = subprocess.run([sys.executable, "-c", "import keras_seg"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode != 0
    assert "KERAS_SEG_ALLOCATOR='jemalloc'" in proc.stderr and "KERAS_SEG_ALLOCATOR=system" in proc.stderr
