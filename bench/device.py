"""./run.sh bench device: what this machine offers the pipeline (torch, CUDA, the GPU, bf16, cores). No timing."""

from __future__ import annotations

import os

import torch


def main() -> None:
    print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    if not torch.cuda.is_available():
        print("no CUDA device: the pipeline runs on CPU")
        return
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
              f"{p.multi_processor_count} SMs, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")  # fmt: skip


if __name__ == "__main__":
    main()
