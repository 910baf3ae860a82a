"""The kinds of machine users have, as groundup.runtime describes them (for runtime.simulate)."""

from groundup.runtime import Machine

AVX2 = Machine(cpu_isa="AVX2", cpu_bf16=False, amx=False, onednn_bf16=False, cuda=False, cuda_bf16=False)
AVX512 = Machine(cpu_isa="AVX512", cpu_bf16=False, amx=False, onednn_bf16=True, cuda=False, cuda_bf16=False)
AVX512_BF16 = Machine(cpu_isa="AVX512", cpu_bf16=True, amx=False, onednn_bf16=True, cuda=False, cuda_bf16=False)
AMX = Machine(cpu_isa="AVX512", cpu_bf16=True, amx=True, onednn_bf16=True, cuda=False, cuda_bf16=False)
CUDA_AMPERE = Machine(cpu_isa="AVX2", cpu_bf16=False, amx=False, onednn_bf16=False, cuda=True, cuda_bf16=True,
                      cuda_name="NVIDIA A100")
CUDA_TURING = Machine(cpu_isa="AVX2", cpu_bf16=False, amx=False, onednn_bf16=False, cuda=True, cuda_bf16=False,
                      cuda_name="Tesla T4")
ALL = {"avx2": AVX2, "avx512": AVX512, "avx512-bf16": AVX512_BF16, "amx": AMX, "cuda-ampere": CUDA_AMPERE,
       "cuda-turing": CUDA_TURING}
