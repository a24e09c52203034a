"""What a run keeps on disk: the best checkpoint (weights, tokenizer, labels) and, for resumable runs, the
training state at each epoch end. Every folder is written beside its final name and swapped in whole, so a
crash never leaves half of one. Every rank takes part in the collectives.

Machines need not share a disk. The best checkpoint is written by the main process (on machine 0) and read back
there only: its weights reach the other ranks over the process group. The training state is saved by every
machine into a folder of its own (each machine's first process swaps it in), so each machine resumes from what it
wrote."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.utils import DistributedType
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from harness.results import write_new_json

CHECKPOINT_INFO = "harness.json"  # beside the weights: labels, recipe and run id, for `harness eval`


def swap_in(staging: Path, path: Path) -> None:
    """Replace path by the finished staging folder (the previous content is removed only after the swap)."""
    previous = path.with_name(path.name + ".previous")
    if path.exists():
        path.rename(previous)
    staging.rename(path)
    shutil.rmtree(previous, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, model, tokenizer, path: Path, info: dict[str, Any]) -> None:
    """Weights + tokenizer + run info, loadable with from_pretrained anywhere."""
    state = accelerator.get_state_dict(model)  # collective under DeepSpeed ZeRO-3: every rank calls it
    if accelerator.is_main_process:  # the only rank with the whole state under ZeRO-3 (the others get None)
        consume_prefix_in_state_dict_if_present(state, "_orig_mod.")  # torch.compile's wrapper prefixes every name
        staging = path.with_name(path.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        plain = accelerator.unwrap_model(model, keep_torch_compile=False)  # past torch.compile's wrapper too
        plain.save_pretrained(staging, state_dict=state, save_function=accelerator.save)
        tokenizer.save_pretrained(staging)
        write_new_json(staging / CHECKPOINT_INFO, info)
        swap_in(staging, path)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def full_size_parameters(plugin: DeepSpeedPlugin | None):
    """Under ZeRO-3, transformers builds partitioned (empty) parameters in from_pretrained; inside this
    context it builds ordinary ones."""
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def load_weights(accelerator: Accelerator, model, path: Path) -> None:
    """A saved checkpoint's weights into the prepared model on every rank: read from disk by the main process,
    which wrote it (another machine's disk may not have it), and sent to the others over the process group."""
    from transformers import AutoModelForSequenceClassification

    accelerator.wait_for_everyone()  # the main process has finished writing the checkpoint
    plugin = accelerator.state.deepspeed_plugin
    state = {}
    if accelerator.is_main_process:
        with full_size_parameters(plugin):
            state = AutoModelForSequenceClassification.from_pretrained(path).state_dict()
    # past torch.compile's wrapper, whose weights are named _orig_mod.*
    model = accelerator.unwrap_model(model, keep_torch_compile=False)
    if accelerator.distributed_type == DistributedType.FSDP:  # sharded (DTensor) parameters: each rank takes its shard
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, state, options=options)
    elif plugin is not None and plugin.deepspeed_config["zero_optimization"]["stage"] == 3:
        import deepspeed  # partitioned parameters: gather, let rank 0 load, re-partition

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
            if accelerator.is_main_process:
                model.load_state_dict(state)
    else:
        if accelerator.is_main_process:
            model.load_state_dict(state)
        broadcast_from_main(accelerator, model)


def broadcast_from_main(accelerator: Accelerator, model) -> None:
    """Every rank's parameters and buffers become the main process's (replicated models: DDP, ZeRO-1/2)."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for tensor in model.state_dict().values():
        dist.broadcast(tensor.data, src=0)


@dataclass
class Progress:
    """Where the training loop is: what a resumed attempt needs to continue."""

    step: int = 0
    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"step": None, "value": None, "metrics": None})
    target: dict[str, Any] | None = None  # the first evaluation that reached train.target: step, wall time, energy


def save_progress(accelerator: Accelerator, state_dir: Path, progress: Progress) -> None:
    """Model, optimizer, scheduler and RNG states plus the loop's progress, swapped in whole at each epoch
    end, so a preempted run restarts from its last finished epoch. state_dir is this machine's: its first
    process prepares and swaps it (with several machines, the accelerator saves a full copy on each)."""
    staging = state_dir.with_name(state_dir.name + ".staging")
    if accelerator.is_local_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))  # every rank writes its part (DeepSpeed shards, RNG states)
    accelerator.wait_for_everyone()  # every rank of this machine has written into staging
    if accelerator.is_local_main_process:
        write_new_json(staging / "progress.json", dataclasses.asdict(progress))
        swap_in(staging, state_dir)
    accelerator.wait_for_everyone()


def resume(accelerator: Accelerator, state_dir: Path) -> Progress:
    """The saved progress of an interrupted attempt of this run (this machine's copy), or a fresh start. Every
    rank must find the same epoch saved: machines that resumed from different epochs would train apart."""
    from accelerate.utils import gather_object

    progress_file = state_dir / "progress.json"
    saved = json.loads(progress_file.read_text())["step"] if progress_file.is_file() else None
    found = gather_object([saved])
    if len(set(found)) > 1:
        raise RuntimeError(f"the ranks found different saved states (steps by rank: {found}); the run cannot resume "
                           "consistently: remove the run folder's state to start again")  # fmt: skip
    if saved is None:
        return Progress()
    accelerator.load_state(str(state_dir))
    progress = Progress(**json.loads(progress_file.read_text()))
    accelerator.print(f"resuming after epoch {progress.epochs_done} (step {progress.step})")
    return progress

