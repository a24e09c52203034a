"""Launch configuration for runs of several processes: the accelerate config and the DeepSpeed JSON, written
from the recipe so that a run's setup is all in its recipe. No torch here.

DeepSpeed's "auto" values for batch size, accumulation, clipping and precision are resolved here from the
recipe (accelerate cannot infer a micro-batch size from a length-grouped batch sampler); the bucket sizes
that depend on the model's hidden size stay "auto" for accelerate to fill in.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.recipe import MIXED_PRECISION, Recipe

SHIPPED_DEEPSPEED = {name: Path(__file__).parent / "deepspeed" / f"{name}.json" for name in ("zero2", "zero3")}
DEEPSPEED_INSTALL = "DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed  (or: pip install 'harness[deepspeed]')"


def check_deepspeed(recipe: Recipe) -> None:
    """DeepSpeed asked for: it must be installed and its config must exist, before anything launches."""
    choice = recipe.hardware.deepspeed
    if choice is None:
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise HarnessError(f"hardware.deepspeed: '{choice}' asked for but DeepSpeed is not installed; {DEEPSPEED_INSTALL}")
    if choice not in SHIPPED_DEEPSPEED and not Path(choice).is_file():
        raise HarnessError(
            f"hardware.deepspeed: '{choice}' is neither a shipped config ({', '.join(SHIPPED_DEEPSPEED)}) "
            "nor an existing JSON file"
        )


def deepspeed_config(recipe: Recipe) -> dict[str, Any]:
    """The DeepSpeed JSON for this recipe: the chosen template with the recipe's values in its "auto" slots."""
    choice = recipe.hardware.deepspeed
    config = json.loads(Path(SHIPPED_DEEPSPEED.get(choice, choice)).read_text())
    train, world = recipe.train, recipe.hardware.num_processes
    resolved = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.batch_size * train.gradient_accumulation_steps * world,
        "gradient_clipping": train.max_grad_norm or 0.0,
    }
    for key, value in resolved.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    for dtype in ("bf16", "fp16"):
        section = config.setdefault(dtype, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = recipe.precision.dtype == dtype
    if recipe.hardware.num_machines > 1:  # machines may not share a disk: each node saves what its ranks need
        config.setdefault("checkpoint", {}).setdefault("use_node_local_storage", True)
    zero = config.setdefault("zero_optimization", {})
    if recipe.hardware.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero.get("stage") == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return config


def deepspeed_summary(config: dict[str, Any]) -> dict[str, Any]:
    """What a result records of the DeepSpeed setup that ran."""
    zero = config.get("zero_optimization", {})
    return {
        "stage": zero.get("stage"),
        "offload_optimizer": zero.get("offload_optimizer", {}).get("device", "none"),
        "offload_param": zero.get("offload_param", {}).get("device", "none"),
    }


def fsdp_options(recipe: Recipe) -> dict[str, Any]:
    """accelerate's FullyShardedDataParallelPlugin arguments for the recipe (FSDP2, one unit per layer)."""
    return {
        "fsdp_version": 2,
        "reshard_after_forward": recipe.hardware.fsdp == "full_shard",  # False: shard grads and optimizer only
        "auto_wrap_policy": "transformer_based_wrap",
        "state_dict_type": "FULL_STATE_DICT",  # checkpoints load anywhere with from_pretrained
        "cpu_offload": recipe.hardware.offload == "cpu",
    }


def accelerate_config(recipe: Recipe, deepspeed_file: Path | None) -> dict[str, Any]:
    """An accelerate config file's content (the YAML `accelerate config` would write) for this recipe."""
    hardware = recipe.hardware
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": distributed_type(recipe, deepspeed_file),
        "num_processes": hardware.num_processes,  # total over all machines
        "num_machines": hardware.num_machines,
        "machine_rank": 0,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,  # CPU runs set ACCELERATE_USE_CPU=1 instead, which keeps torchrun as the launcher
    }
    if not deepspeed_file:  # DeepSpeed takes bf16/fp16 from its JSON and refuses a second source for it
        config["mixed_precision"] = MIXED_PRECISION[recipe.precision.dtype]
    else:
        stage = json.loads(deepspeed_file.read_text()).get("zero_optimization", {}).get("stage")
        config["deepspeed_config"] = {"deepspeed_config_file": str(deepspeed_file), "zero3_init_flag": stage == 3}
        if hardware.num_machines > 1:  # torch elastic on every machine, as for DDP (accelerate's default is pdsh)
            config["deepspeed_config"]["deepspeed_multinode_launcher"] = "standard"
    if hardware.fsdp:
        options = fsdp_options(recipe)
        config["fsdp_config"] = {
            "fsdp_version": options["fsdp_version"],
            "fsdp_reshard_after_forward": options["reshard_after_forward"],
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": options["state_dict_type"],
            "fsdp_offload_params": options["cpu_offload"],
        }
    return config


def distributed_type(recipe: Recipe, deepspeed_file: Path | None) -> str:
    if deepspeed_file:
        return "DEEPSPEED"
    if recipe.hardware.fsdp:
        return "FSDP"
    return "MULTI_GPU" if recipe.hardware.num_processes > 1 else "NO"


def launch_arguments(
    config_file: Path,
    plan_file: Path,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
) -> list[str]:
    """`accelerate launch` arguments that start harness.train on every process of this machine."""
    args = ["--config_file", str(config_file), "--machine_rank", str(machine_rank)]
    if main_process_ip:
        args += ["--main_process_ip", main_process_ip]
    if main_process_port:
        args += ["--main_process_port", str(main_process_port)]
    return args + ["--module", "harness.train", "--plan", str(plan_file)]


def cpu_threads_per_process(recipe: Recipe, threads_alone: int, user_setting: str | None) -> str:
    """OMP_NUM_THREADS for each process of this machine: the user's setting, else what one process would use
    alone (torch's default, the physical cores) shared by the machine's processes. accelerate launch and torchrun
    would otherwise give every process one thread: a one-process CPU run would use one core of many."""
    if user_setting:
        return user_setting
    per_machine = recipe.hardware.num_processes // recipe.hardware.num_machines
    return str(max(1, threads_alone // per_machine))
