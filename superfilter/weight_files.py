"""Safetensors files read without a second copy in memory: headers, and fp32 files loaded into a half-precision model.

`from_pretrained(folder, dtype=bf16)` on fp32 files maps every page of them while it makes the bf16 copy, so a
load costs the fp32 file plus the bf16 model: 1.6 GB above the process for Gemma-3-270M, which set the peak of the
evaluation (it loads each trained model/, saved in fp32). Loaded in fp32, safetensors' tensors are views of the
mapped file and cost nothing until read; each parameter is then converted to half precision and its file pages are
handed back (`madvise(MADV_DONTNEED)`: a private file mapping re-reads the file should they be touched again), so
the peak is the half-precision model plus one fp32 tensor. The weights are the ones the direct load gives, bit for
bit (`tests/test_models.py`); buffers take the dtype a half-precision construction gives them.
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import struct
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
HALF = (torch.bfloat16, torch.float16)


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """A safetensors file's header (name → dtype, shape, data_offsets) and where its data starts."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def fp32_files(folder: Path) -> list[Path]:
    """The folder's safetensors files when every tensor in them is fp32; [] otherwise."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files or not all(e.get("dtype") == "F32" for f in files for e in read_header(f)[0].values()):
        return []
    return files


def mapped_ranges(files: list[Path]) -> list[tuple[int, int]]:
    """The address ranges where this process maps any of `files` (from /proc/self/maps; [] where there is none)."""
    names = {str(f.resolve()) for f in files}
    ranges = []
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in names:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _madvise() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "madvise"):
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


def release_pages(tensor: torch.Tensor, ranges: list[tuple[int, int]], madvise: Any) -> None:
    """Hand back the whole pages of a tensor that lie in a mapping of the weight files (never anonymous memory)."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    if madvise is None or not any(lo <= start and end <= hi for lo, hi in ranges):
        return
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        madvise(first, last - first, MADV_DONTNEED)


@torch.no_grad()
def halve_in_place(model: torch.nn.Module, dtype: torch.dtype, files: list[Path]) -> None:
    """An fp32 model loaded from `files` → `dtype`, parameter by parameter, handing back each one's file pages;
    buffers get the dtypes the model's class gives them when built in `dtype`."""
    # deferred: transformers takes seconds to import; loaded only when a model is
    from transformers import AutoModelForCausalLM

    ranges, madvise = mapped_ranges(files), _madvise()
    for param in {id(p): p for p in model.parameters()}.values():
        if param.dtype == torch.float32:
            half = param.data.to(dtype)
            release_pages(param.data, ranges, madvise)
            param.data = half
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(model.config, dtype=dtype)
    wanted = {name: buf.dtype for name, buf in built.named_buffers()}
    for name, buf in list(model.named_buffers()):
        if name in wanted and buf.dtype != wanted[name]:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            module._buffers[attr] = buf.to(wanted[name])
    model.config.dtype = dtype
