"""Memory before the work: what a registration will need, what the machine has, and what to do when it does not fit.

:func:`plan` is called by :func:`metareg.core.registration.register` before any work. A registration needs memory of two
kinds:

* on the fixed image's grid (CPU): the field (3 float64 per voxel in 3D), the Jacobian determinant, the warped image,
  the metrics' copies and, in the CLI, the read-back check of each written file: :data:`FIXED_BYTES_PER_VOXEL`;
* on the work grid of the iterative method and of the refinement (on the device): the pyramid, the supersampled
  moving image, the B-spline parameters, Adam's state and the gradients: :data:`WORK_BYTES_PER_VOXEL`. The work grid
  is the fixed grid coarsened to at most :data:`metareg.core.registration.ITERATIVE_MAX_VOXELS`.

When both fit, nothing changes. When only a coarser work grid fits, the work grid is coarsened to fit (down to
:data:`MIN_WORK_VOXELS`) and the report says so. When not even that fits, registration is refused with the memory
needed, the memory available and what to do. The available memory is the least of the machine's available memory,
the cgroup's limit (containers) and the address-space limit (``ulimit -v``); on a GPU, its free memory for the work.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import NoReturn

#: Bytes per fixed-grid voxel a registration adds (3D; 2D has two field components, scaled by 2/3 and not measured),
#: from the peak resident memory of `metareg register` with --warped, --field, --jacobian, --transform (.h5) and
#: --report outputs on the CT-sized pair of benchmarks/clinical_size.py (105 M voxels: 13.5 GB, of which 1.2 GB the
#: process and its inputs before the work and about 1 GB the work grid): the writing of the outputs, each read back
#: and checked, is the peak.
FIXED_BYTES_PER_VOXEL = {2: 80, 3: 110}
#: Bytes per work-grid voxel of the iterative method and the refinement (moving image supersampled 2×): 3D from the
#: refinement's own rise in resident memory with the work grid at its cap (about 0.8 GB for 2.1 M voxels, sampled per
#: stage on a 256×256×200 pair), rounded up; 2D not measured (a smaller share, by the same per-voxel reasoning).
WORK_BYTES_PER_VOXEL = {2: 250, 3: 450}
#: The work grid is never coarsened below this many voxels to fit the memory: a coarser one would not register.
MIN_WORK_VOXELS = {2: 128 * 128, 3: 48**3}
#: Room kept free for everything else (torch's allocator caches, the interpreter, the writers' buffers).
MARGIN_BYTES = 256 * 2**20


@dataclass(frozen=True)
class MemoryPlan:
    """What :func:`plan` decided.

    Attributes:
        work_max_voxels: the most voxels the work grid may have (``None``: the usual cap).
        needed_bytes: estimated memory the registration adds, with that work grid.
        available_bytes: memory available for it (``None`` when it cannot be told).
        note: a sentence for the report when the work grid was coarsened to fit, else ``""``.
    """

    work_max_voxels: int | None
    needed_bytes: int
    available_bytes: int | None
    note: str = ""

    def to_dict(self) -> dict:
        mib = 2**20
        return {"needed_mb": round(self.needed_bytes / mib), "available_mb": None if self.available_bytes is None
                else round(self.available_bytes / mib), "work_max_voxels": self.work_max_voxels, "note": self.note}


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def _address_space_available() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm") as handle:
            in_use = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
    return max(0, soft - in_use)


def available_memory_bytes() -> int | None:
    """Memory this process can still use (bytes): the least of the machine's available memory, the cgroup limit and
    the address-space limit; None when none of them can be read."""
    known = [value for value in (_meminfo_available(), _cgroup_available(), _address_space_available())
             if value is not None]
    return min(known) if known else None


def gpu_free_bytes(device) -> int | None:
    """Free memory of a CUDA device (bytes), None for other devices."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GB"


def plan(dim: int, fixed_voxels: int, work_voxels: int, uses_work_grid: bool, device=None,
         available: int | None = None, gpu_free: int | None = None) -> MemoryPlan:
    """Decide the work grid's cap for a registration, or refuse it (raises :class:`metareg.core.errors.InputError`).

    Args:
        dim: 2 or 3. fixed_voxels: voxels of the fixed image. work_voxels: voxels of the usual work grid.
        uses_work_grid: the iterative method or a refinement runs (a network alone has no work grid).
        device: the torch device the work runs on.
        available, gpu_free: the memory available on the CPU and free on the GPU, bytes (measured when None).
    """
    available = available_memory_bytes() if available is None else available
    gpu_free = gpu_free_bytes(device) if gpu_free is None else gpu_free
    fixed_part = FIXED_BYTES_PER_VOXEL[dim] * fixed_voxels + MARGIN_BYTES
    per_work = WORK_BYTES_PER_VOXEL[dim] if uses_work_grid else 0
    smallest = min(MIN_WORK_VOXELS[dim], work_voxels)
    if gpu_free is None:  # everything in CPU memory
        if available is None or fixed_part + per_work * work_voxels <= available:
            return MemoryPlan(None, fixed_part + per_work * work_voxels, available)
        room, where = available - fixed_part, "the memory available"
    else:  # the fixed-grid part in CPU memory, the work on the GPU
        if available is not None and fixed_part > available:
            _refuse(fixed_voxels, fixed_part, available, "")
        if per_work * work_voxels + MARGIN_BYTES <= gpu_free:
            return MemoryPlan(None, fixed_part + per_work * work_voxels, available)
        room, where = gpu_free - MARGIN_BYTES, "the GPU's free memory"
    fitting = int(room // per_work) if per_work else 0
    if not per_work or fitting < smallest:
        if gpu_free is None:
            assert available is not None  # (a plan without a measured limit returned above)
            _refuse(fixed_voxels, fixed_part + per_work * smallest, available, "")
        _refuse(fixed_voxels, per_work * smallest + MARGIN_BYTES, gpu_free, " on the GPU")
    note = (f"the work grid of the iterative method was coarsened from {work_voxels} to at most {fitting} voxels to "
            f"fit {where} ({_gib(room)}); the field is coarser than usual")
    return MemoryPlan(fitting, fixed_part + per_work * fitting, available, note)


def _refuse(fixed_voxels: int, needed: int, available: int, where: str) -> NoReturn:
    from metareg.core.errors import InputError

    raise InputError("fixed", f"registering this {fixed_voxels}-voxel image needs about {_gib(needed)} of memory"
                     f"{where}, and {_gib(max(available, 0))} are available",
                     "free memory (close other programs), or crop or downsample the images (e.g. to 1 mm voxels)"
                     + (", or run it with device='cpu'" if where else ""))
