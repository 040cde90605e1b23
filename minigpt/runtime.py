"""Where training runs: the device, the autocast precision, and this process's place in a
DistributedDataParallel job. `Runtime.from_config(cfg.train)` resolves all of it once, so the
training loop asks `runtime.master` or `runtime.autocast()` instead of checking flags.

    runtime = Runtime.from_config(cfg.train)   # torchrun's RANK/WORLD_SIZE/LOCAL_RANK, if set
    runtime.start()                            # joins the process group under torchrun
    train_model = runtime.wrap(model, compile=False)

`tune_process()` holds the process-wide speed settings; entry points (train.py, the benchmark)
opt into it, library code never calls it.
"""

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass

try:
    import resource
except ImportError:  # Windows: memory and page faults are reported as nan
    resource = None

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from minigpt.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps, checked to exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("the device is cuda but no CUDA GPU is available; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"there is no {device}: this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("the device is mps but MPS is not available; use cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16/fp16 on CUDA, fp32 elsewhere (CPU bf16 is far slower here, and
    MPS autocast is not offered for models this small). A precision asked for by name on MPS must
    pass autocast_works there (bf16 needs macOS 14 or later)."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type not in ("cuda", "mps"):
        raise ConfigError("train.precision fp16 needs a CUDA or MPS device; use fp32 or bf16")
    dtype = DTYPES[name]
    if device.type == "mps" and dtype != torch.float32 and not autocast_works(device, dtype):
        raise ConfigError(f"this Mac's MPS device cannot run {name} (bf16 needs macOS 14 or "
                          f"later); use --train.precision fp32")
    return dtype


def autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a small matmul runs under autocast to dtype on the device: the capability asked
    of the device itself, not guessed from its name or the OS version."""
    try:
        with torch.autocast(device.type, dtype=dtype):
            x = torch.ones(4, 4, device=device)
            return bool(torch.isfinite((x @ x).float()).all())
    except (RuntimeError, TypeError, ValueError):
        return False


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on the device (the machine's RAM for cpu and mps); None where the OS does
    not say, and then size checks are skipped."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return physical_memory()


def physical_memory() -> int | None:
    """The machine's RAM in bytes: sysconf on Linux and macOS, GlobalMemoryStatusEx on Windows
    (which has no os.sysconf), else None."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf, or not these names
        pass
    kernel32 = getattr(getattr(ctypes, "windll", None), "kernel32", None)
    if kernel32 is None:
        return None

    class MemoryStatus(ctypes.Structure):  # MEMORYSTATUSEX, from the Windows SDK's sysinfoapi.h
        _fields_ = [("length", ctypes.c_ulong), ("memory_load", ctypes.c_ulong),
                    ("total_physical", ctypes.c_ulonglong), ("available_physical", ctypes.c_ulonglong),
                    ("total_page_file", ctypes.c_ulonglong), ("available_page_file", ctypes.c_ulonglong),
                    ("total_virtual", ctypes.c_ulonglong), ("available_virtual", ctypes.c_ulonglong),
                    ("available_extended_virtual", ctypes.c_ulonglong)]

    status = MemoryStatus(length=ctypes.sizeof(MemoryStatus))
    if not kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return None
    return status.total_physical


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def torchrun_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from the environment torchrun sets, checked; None for a
    single process (neither RANK nor WORLD_SIZE set)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        return None
    given = {name: os.environ.get(name) for name in names}
    try:
        rank, world = int(given["RANK"]), int(given["WORLD_SIZE"])
        local = int(given["LOCAL_RANK"] or rank)
    except (TypeError, ValueError):
        rank = world = local = -1
    if not 0 <= rank < world or local < 0 or not given["MASTER_ADDR"] or not given["MASTER_PORT"]:
        shown = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise ConfigError(f"the torchrun environment is incomplete or inconsistent ({shown}); "
                          f"start the processes with torchrun (torchrun --nproc_per_node=N "
                          f"train.py ...), or unset RANK and WORLD_SIZE to train in one process")
    return rank, world, local


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype = torch.float32  # autocast dtype; fp32 means no autocast
    rank: int = 0
    world_size: int = 1
    distributed: bool = False  # started by torchrun: gradients are all-reduced by DDP
    fsdp: bool = False  # under torchrun with train.fsdp: FSDP2 shards the model instead of DDP

    @classmethod
    def from_config(cls, tc) -> "Runtime":
        """From train.device / train.precision / train.threads and torchrun's environment."""
        ranks = torchrun_ranks()
        rank, world_size, local_rank = ranks or (0, 1, 0)
        device = resolve_device(tc.device)
        if ranks and device.type == "cuda":
            device = torch.device("cuda", local_rank)
        if tc.threads:  # asked for explicitly by the config
            torch.set_num_threads(tc.threads)
        return cls(device, resolve_precision(tc.precision, device), rank, world_size,
                   ranks is not None, ranks is not None and tc.fsdp)

    @property
    def master(self) -> bool:
        """Rank 0: the process that writes checkpoints and logs."""
        return self.rank == 0

    def autocast(self):
        """Mixed precision for the forward pass, or nothing in fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def start(self) -> None:
        """Join the process group of a torchrun job (NCCL on CUDA, gloo on CPU)."""
        if self.distributed:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """The module to train: torch.compile'd if asked, inside DDP under torchrun; with FSDP,
        every block and then the rest (embeddings, final norm, head) sharded in place, so each
        rank holds 1 / world_size of every weight between uses (call before making optimizers)."""
        if compile:
            model = torch.compile(model)
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            return fully_shard(model)
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        return model

    def sync_gradients(self, model: nn.Module, sync: bool):
        """Context for one backward pass: under DDP, all-reduce gradients only when sync is set
        (the last micro-batch of a step); elsewhere nothing."""
        if self.fsdp:
            model.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        if self.distributed and not sync:
            return model.no_sync()
        return contextlib.nullcontext()

    def full_state(self, model: nn.Module, optimizers: list) -> tuple[dict, list[dict]]:
        """The model's and optimizers' state dicts, whole: under FSDP every rank must call this
        (the shards are gathered to rank 0, on the CPU; the other ranks get empty dicts)."""
        if not self.fsdp:
            return model.state_dict(), [o.state_dict() for o in optimizers]
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(model, options=whole),
                [get_optimizer_state_dict(model, o, options=whole) for o in optimizers])

    def load_full_state(self, model: nn.Module, optimizers: list, weights: dict,
                        optimizer_states: list[dict]) -> None:
        """full_state's inverse: every rank passes the whole state it read from the checkpoint."""
        if not self.fsdp:
            model.load_state_dict(weights)
            for optimizer, state in zip(optimizers, optimizer_states):
                optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        whole = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=whole)
        for optimizer, state in zip(optimizers, optimizer_states):
            set_optimizer_state_dict(model, optimizer, state, options=whole)

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over all ranks (itself outside DDP): every rank then sees the same
        loss, so a NaN on one rank stops them all together."""
        if self.distributed:
            dist.all_reduce(value)
            value = value / self.world_size
        return value

    def any_rank(self, flag: bool) -> bool:
        """Whether flag is set on any rank (itself outside DDP), so that all ranks leave the loop
        at the same step when a signal reaches only some of them."""
        if not self.distributed:
            return flag
        value = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    A training step frees and re-allocates the same activation buffers (1-2 MB each for the CPU
    recipe). By default glibc serves blocks that large with fresh mmap calls and returns them at
    free, so every step page-faults its activations in again (about 1,000 faults per step of the
    CPU recipe, 8 with this: `python -m minigpt.bench train`, variants fused vs tuned). Peak
    memory is unchanged: the same buffers are reused. Returns False where the C library is not
    glibc (macOS, Windows, musl), which keeps its own behaviour.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    return (mallopt(M_MMAP_THRESHOLD, 32 * 2**20) == 1  # the largest threshold glibc allows
            and mallopt(M_TRIM_THRESHOLD, 256 * 2**20) == 1)


def tune_process() -> None:
    """Process-wide speed settings for a process that trains: glibc keeps freed memory
    (`keep_freed_memory`) and CUDA matmuls may use TF32. They change the whole process, so only
    entry points call this (train.py, `python -m minigpt.bench`), never library code: the demo app,
    which also trains, runs without them."""
    keep_freed_memory()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB; nan where the OS has no getrusage (Windows)."""
    if resource is None:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB


def minor_faults() -> float:
    """Page faults this process has taken so far (nan on Windows)."""
    return float("nan") if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt
