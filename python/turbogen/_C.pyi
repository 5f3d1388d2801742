"""Typed stub of turbogen's compiled extension (csrc/bindings/). Use turbogen.ops, not this module.

Every op has an argument struct whose fields are set by name (buffers as integer addresses from
``Tensor.data_ptr()``, 0 for none) and launchers ``launch_<op>_cpu(args)`` /
``launch_<op>_cuda(args, stream)``, which validate the struct before touching memory and raise
ValueError naming the bad argument. The CUDA launchers exist in every build and raise RuntimeError
when the extension was built without CUDA kernels. tests/ops/test_native_bounds.py keeps this stub
and the module's names in sync.
"""

version: str
cuda_compiled: bool
cuda_archs: str

class SamplingArgs:
    logits: int
    rows: int
    vocab: int
    row_stride: int
    dtype: int
    temperature: int
    temperature_per_row: bool
    top_k: int
    top_k_per_row: bool
    top_p: int
    top_p_per_row: bool
    min_p: int
    min_p_per_row: bool
    seed: int
    offset: int
    offset_per_row: bool
    tokens: int
    logprobs: int
    filtered: int
    workspace: int
    workspace_bytes: int
    def __init__(self) -> None: ...

class SoftmaxArgs:
    logits: int
    out: int
    temperature: int
    rows: int
    cols: int
    row_stride: int
    dtype: int
    temperature_per_row: bool
    def __init__(self) -> None: ...

class TopKArgs:
    scores: int
    values: int
    indices: int
    rows: int
    cols: int
    row_stride: int
    k: int
    def __init__(self) -> None: ...

def launch_sample_cpu(args: SamplingArgs) -> None: ...
def launch_sample_cuda(args: SamplingArgs, stream: int) -> None: ...
def sampling_workspace_bytes(rows: int, vocab: int) -> int: ...
def launch_softmax_cpu(args: SoftmaxArgs) -> None: ...
def launch_softmax_cuda(args: SoftmaxArgs, stream: int) -> None: ...
def launch_topk_cpu(args: TopKArgs) -> None: ...
def philox4x32(c0: int, c1: int, c2: int, c3: int, k0: int, k1: int, rounds: int = 10) -> tuple[int, int, int, int]: ...
def cuda_device_count() -> tuple[int, str]: ...
def num_threads() -> int: ...
def cpu_isa() -> str: ...
