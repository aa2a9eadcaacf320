"""latentinv._allocator: glibc keeps the activations of a batch of starts instead of re-faulting them."""
import os
import subprocess
import sys
import textwrap

import pytest

glibc = sys.platform.startswith("linux")

# minor page faults per iteration of a decoder pass large enough to exceed glibc's default thresholds
PROBE = textwrap.dedent("""
    import resource, torch
    import latentinv._allocator as allocator
    from latentinv.nn import ConvDecoder
    print(allocator.tune_malloc_for_tensors())
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # the paper's decoder through torch's own ops, its fully-connected layers as modules (the core's
    # kernels and the composed map keep fewer large temporaries: the faults left for glibc's defaults
    # then vary from 0 to 5500 between runs)
    ConvDecoder.native_cpu_kernels = False
    ConvDecoder.compose_fc = False
    dec = ConvDecoder((129, 65), 20).eval().requires_grad_(False)
    z = torch.randn(32, 20, requires_grad=True)  # 32 starts
    def step():
        (g,) = torch.autograd.grad(dec(z).sum(), z)
    for _ in range(6):                          # to the heap's steady state
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
""")


def _probe(tuning):
    env = {"LATENTINV_MALLOC_TUNING": tuning, "PATH": "", "OMP_NUM_THREADS": "1"}
    env.update({k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "LD_LIBRARY_PATH")})
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(not glibc, reason="glibc only")
def test_tuning_keeps_the_activations_without_page_faults_each_iteration():
    applied, faults_tuned = _probe("1")
    skipped, faults_default = _probe("0")
    assert applied and not skipped
    # 32 starts x 32 channels x 63 x 31 floats = 8 MB (2000 pages of 4 KiB) per activation. The tuned
    # thresholds keep them on the heap: fewer faults per iteration than half of one activation's pages
    # (0-190 measured on a Xeon).
    assert faults_tuned < 1000, f"{faults_tuned} minor faults per iteration with the tuning"
    # glibc's defaults raise the mmap threshold on their own after a large free, so whether they fault the
    # activations in again depends on the machine's heap layout: 6000-11600 per iteration on a Xeon
    # (glibc 2.36), none on CI's machine. Where they do, the tuning removes nine tenths of them or more.
    if faults_default > 1000:
        assert faults_tuned < 0.1 * faults_default


def test_tuning_is_applied_once_and_reports_its_state(monkeypatch):
    import latentinv._allocator as allocator

    monkeypatch.setattr(allocator, "_state", {"done": False, "applied": False})
    monkeypatch.setenv("LATENTINV_MALLOC_TUNING", "0")
    assert allocator.tune_malloc_for_tensors() is False
    monkeypatch.setenv("LATENTINV_MALLOC_TUNING", "1")
    assert allocator.tune_malloc_for_tensors() is False    # decided once per process


@pytest.mark.skipif(not glibc, reason="glibc only")
@pytest.mark.parametrize("setting, applied", [("1", True), ("0", False), ("", False)])
def test_tuning_sets_glibcs_mmap_threshold_to_32_mib_and_its_trim_threshold_to_1_gib(monkeypatch, setting, applied):
    """The two mallopt calls, on a stand-in libc: M_MMAP_THRESHOLD (-3 in glibc's malloc.h) to 32 MiB,
    M_TRIM_THRESHOLD (-1) to 1 GiB; none where LATENTINV_MALLOC_TUNING is 0 or empty; not applied where
    glibc refuses one (mallopt returns 0)."""
    import latentinv._allocator as allocator

    calls, refuse = [], []

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 0 if param in refuse else 1

        def gnu_get_libc_version(self):
            return b"2.35"

    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setattr(allocator, "_state", {"done": False, "applied": False})
    monkeypatch.setenv("LATENTINV_MALLOC_TUNING", setting)
    assert allocator.tune_malloc_for_tensors() is applied
    assert calls == ([(-3, 32 * 2 ** 20), (-1, 2 ** 30)] if applied else [])
    if applied:
        refuse.append(-1)
        monkeypatch.setattr(allocator, "_state", {"done": False, "applied": False})
        assert allocator.tune_malloc_for_tensors() is False
