"""CMake arguments that build llama.cpp (a benchmark anchor) for the ISA this CPU has, read from /proc/cpuinfo.

A native build (-march=native) died with "Illegal instruction" on virtual machines whose CPUID promises more than
they run, and a fixed AVX-512 build cannot run on an AVX2-only CPU: name each extension the CPU lists instead.
AMX stays off: ggml's AMX path needs the kernel to grant tile state, which virtual machines often withhold.

    CMAKE_ARGS="$(python3 bench/llama_cpp_flags.py)" pip install llama-cpp-python==...
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

# ggml option -> the /proc/cpuinfo flags it compiles for (all must be present)
X86_OPTIONS = [
    ("GGML_AVX", {"avx"}),
    ("GGML_AVX2", {"avx2"}),
    ("GGML_FMA", {"fma"}),
    ("GGML_F16C", {"f16c"}),
    ("GGML_BMI2", {"bmi2"}),
    ("GGML_AVX_VNNI", {"avx_vnni"}),
    ("GGML_AVX512", {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}),
    ("GGML_AVX512_VBMI", {"avx512f", "avx512vbmi"}),
    ("GGML_AVX512_VNNI", {"avx512f", "avx512_vnni"}),
    ("GGML_AVX512_BF16", {"avx512f", "avx512_bf16"}),
]


def cmake_args(flags: set[str], machine: str = "x86_64") -> str:
    """-D options for a CPU with these cpuinfo flags; off x86 the compiler's native target is safe."""
    if machine not in ("x86_64", "AMD64", "i686"):
        return "-DGGML_NATIVE=ON"
    opts = ["-DGGML_NATIVE=OFF"] + [f"-D{name}={'ON' if need <= flags else 'OFF'}" for name, need in X86_OPTIONS]
    return " ".join(opts)


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


if __name__ == "__main__":
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    sys.stdout.write(cmake_args(cpu_flags(text), platform.machine()) + "\n")
