"""Launch configuration written from the recipe: accelerate config, DeepSpeed JSON, launch arguments."""

import json
from pathlib import Path

import pytest
import yaml

from harness import distributed
from harness.distributed import (
    accelerate_config,
    check_deepspeed,
    cpu_threads_per_process,
    deepspeed_config,
    launch_arguments,
)  # fmt: skip
from harness.errors import HarnessError
from harness.launcher import write_launch_files
from harness.plan import make_plan
from harness.recipe import RecipeError, load_recipe

SMOKE = "minilm-banking77-cpu"


def recipe(*overrides):
    return load_recipe(SMOKE, list(overrides))


def test_zero2_auto_values_come_from_the_recipe():
    r = recipe("hardware.deepspeed=zero2", "hardware.num_processes=4", "precision.dtype=bf16",
               "train.batch_size=16", "train.gradient_accumulation_steps=2", "train.max_grad_norm=0.5")  # fmt: skip
    config = deepspeed_config(r)
    assert config["train_micro_batch_size_per_gpu"] == 16
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 16 * 2 * 4  # micro batch x accumulation x world size
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["zero_optimization"]["stage"] == 2
    assert config["zero_optimization"]["reduce_bucket_size"] == "auto"  # accelerate sizes it from the model
    assert "offload_optimizer" not in config["zero_optimization"]


def test_zero3_cpu_offload_moves_optimizer_and_parameters():
    config = deepspeed_config(recipe("hardware.deepspeed=zero3", "hardware.offload=cpu"))
    zero = config["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert distributed.deepspeed_summary(config) == {"stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu"}


def test_a_users_own_json_keeps_its_explicit_values(tmp_path):
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 8,
                               "fp16": {"enabled": False}}))  # fmt: skip
    config = deepspeed_config(recipe(f"hardware.deepspeed={own}", "train.batch_size=32"))
    assert config["train_micro_batch_size_per_gpu"] == 8  # the user's value, not the recipe's
    assert config["gradient_accumulation_steps"] == 1 and config["zero_optimization"]["stage"] == 1


def test_deepspeed_must_be_installed_and_its_config_must_exist(monkeypatch, tmp_path):
    with pytest.raises(HarnessError, match="neither a shipped config"):
        check_deepspeed(recipe(f"hardware.deepspeed={tmp_path / 'missing.json'}"))
    real_find_spec = distributed.importlib.util.find_spec
    monkeypatch.setattr(distributed.importlib.util, "find_spec",
                        lambda name: None if name == "deepspeed" else real_find_spec(name))  # fmt: skip
    with pytest.raises(HarnessError, match="pip install --no-build-isolation deepspeed"):
        check_deepspeed(recipe("hardware.deepspeed=zero2"))
    check_deepspeed(recipe())  # no DeepSpeed asked: nothing to check


def test_accelerate_config_for_two_processes_and_for_deepspeed(tmp_path):
    plain = accelerate_config(recipe("hardware.num_processes=2", "precision.dtype=bf16"), None)
    assert plain["distributed_type"] == "MULTI_GPU" and plain["num_processes"] == 2
    assert plain["mixed_precision"] == "bf16" and plain["num_machines"] == 1 and plain["use_cpu"] is False
    ds_file = tmp_path / "ds.json"
    ds_file.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with_ds = accelerate_config(recipe("hardware.deepspeed=zero3", "hardware.num_processes=16",
                                       "hardware.num_machines=2"), ds_file)  # fmt: skip
    assert with_ds["distributed_type"] == "DEEPSPEED"
    assert with_ds["num_processes"] == 16 and with_ds["num_machines"] == 2  # total over machines
    # several machines: torch elastic on each (accelerate's default for DeepSpeed would be pdsh, which starts a
    # local-only job), and each node saves the checkpoint files its ranks need (no shared disk assumed)
    assert with_ds["deepspeed_config"] == {"deepspeed_config_file": str(ds_file), "zero3_init_flag": True,
                                           "deepspeed_multinode_launcher": "standard"}  # fmt: skip
    one_machine = accelerate_config(recipe("hardware.deepspeed=zero3", "hardware.num_processes=8"), ds_file)
    assert "deepspeed_multinode_launcher" not in one_machine["deepspeed_config"]
    two = deepspeed_config(recipe("hardware.deepspeed=zero2", "hardware.num_processes=16", "hardware.num_machines=2"))
    assert two["checkpoint"] == {"use_node_local_storage": True}
    assert "checkpoint" not in deepspeed_config(recipe("hardware.deepspeed=zero2", "hardware.num_processes=8"))


def test_a_launcher_that_fails_as_a_subprocess_is_a_failed_result_naming_the_cause(tmp_path, monkeypatch):
    """accelerate's DeepSpeed and one-process launchers fail with CalledProcessError, not torch elastic's
    ChildFailedError: the run is still recorded as failed, with the exit code, and not retried."""
    import subprocess

    from accelerate.commands import launch as accelerate_launch

    from harness import launcher

    def failing_launch(args):
        raise subprocess.CalledProcessError(1, ["deepspeed", "--num_nodes", "2"])

    monkeypatch.setattr(accelerate_launch, "launch_command", failing_launch)
    plan = make_plan(recipe("hardware.num_processes=2", "hardware.deepspeed=zero2", "hardware.device=cpu",
                            f"output.checkpoints_dir={tmp_path / 'ck'}"), results_dir=str(tmp_path / "results"))  # fmt: skip
    plan.resumable = True  # a Modal attempt: a failure must not raise out of the launcher (Modal would retry it)
    with pytest.raises(launcher.RunFailed) as raised:
        launcher._launch_processes(plan, launcher.MachineRole())
    document = json.loads(raised.value.path.read_text())
    assert document["status"] == "failed" and document["error"]["exitcode"] == 1
    assert document["error"]["type"] == "CalledProcessError"


def test_process_count_is_the_total_over_machines():
    with pytest.raises(RecipeError, match="multiple of hardware.num_machines"):
        recipe("hardware.num_processes=3", "hardware.num_machines=2")
    with pytest.raises(RecipeError, match="hardware.offload: needs hardware.deepspeed"):
        recipe("hardware.offload=cpu")


def test_launch_arguments_pass_multi_machine_flags_through(tmp_path):
    args = launch_arguments(tmp_path / "a.yaml", tmp_path / "plan.json", machine_rank=1,
                            main_process_ip="10.0.0.1", main_process_port=29500)  # fmt: skip
    assert args == ["--config_file", str(tmp_path / "a.yaml"), "--machine_rank", "1",
                    "--main_process_ip", "10.0.0.1", "--main_process_port", "29500",
                    "--module", "harness.train", "--plan", str(tmp_path / "plan.json")]  # fmt: skip
    from accelerate.commands.launch import launch_command_parser

    parsed = launch_command_parser().parse_args(args)  # accelerate itself accepts them
    assert parsed.module and parsed.training_script == "harness.train" and parsed.machine_rank == 1


def test_launch_files_are_written_into_a_new_run_folder(tmp_path):
    r = recipe("hardware.num_processes=2", "hardware.deepspeed=zero2", f"output.checkpoints_dir={tmp_path}")
    plan = make_plan(r, results_dir=str(tmp_path / "results"))
    config_file, plan_file = write_launch_files(plan)
    config = yaml.safe_load(config_file.read_text())
    assert config["deepspeed_config"]["deepspeed_config_file"].endswith("deepspeed.json")
    assert json.loads(plan_file.read_text())["run_id"] == plan.run_id
    with pytest.raises(FileExistsError):  # a run folder is never reused
        write_launch_files(plan)


@pytest.mark.parametrize(("exitcode", "resumable", "outcome"), [
    (-15, True, "retried"),  # SIGTERM to a resumable run: preemption, try again
    (143, True, "retried"),  # a worker that recorded its SIGTERM exits with the shell's code for it
    (-15, False, "interrupted"),  # stopped from outside: an interrupted result, written here if not by the worker
    (130, False, "interrupted"),
    (-9, True, "failed"),  # SIGKILL is also the OOM killer's signal: a failure
    (1, True, "failed"),
])  # fmt: skip
def test_a_failed_launch_is_recorded_or_retried(tmp_path, monkeypatch, exitcode, resumable, outcome):
    from accelerate.commands import launch as accelerate_launch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from harness import launcher

    def failing_launch(args):
        failure = ProcessFailure(local_rank=1, pid=4242, exitcode=exitcode, error_file=str(tmp_path / "none"))
        raise ChildFailedError("harness.train", {1: failure})

    monkeypatch.setattr(accelerate_launch, "launch_command", failing_launch)
    plan = make_plan(recipe("hardware.num_processes=2", f"output.checkpoints_dir={tmp_path / 'ck'}"),
                     results_dir=str(tmp_path / "results"))  # fmt: skip
    plan.resumable = resumable
    if outcome == "retried":
        with pytest.raises(launcher.RunInterrupted):
            launcher._launch_processes(plan, launcher.MachineRole())
        assert not (tmp_path / "results").exists() and not list(Path(plan.checkpoint_dir).glob("failed-*"))
        return
    expected = launcher.RunStopped if outcome == "interrupted" else launcher.RunFailed
    with pytest.raises(expected) as raised:
        launcher._launch_processes(plan, launcher.MachineRole())
    document = json.loads(raised.value.path.read_text())
    assert document["status"] == outcome
    if outcome == "interrupted":  # no worker recorded it (none ran): the launcher did, naming the signal
        assert document["error"]["signal"] == {-15: "SIGTERM", 130: "SIGINT"}[exitcode]
        return
    assert document["error"]["rank"] == 1 and document["error"]["exitcode"] == exitcode
    assert document["error"]["type"] == ("Killed" if exitcode < 0 else "ChildFailedError")  # no worker raised
    in_results = raised.value.path.is_relative_to(tmp_path / "results")
    assert in_results == (not resumable)  # a resumable run's attempts stay in its run folder


def test_fsdp_options_and_accelerate_config():
    full = recipe("hardware.fsdp=full_shard", "hardware.num_processes=4", "hardware.offload=cpu")
    assert distributed.fsdp_options(full) == {
        "fsdp_version": 2, "reshard_after_forward": True, "auto_wrap_policy": "transformer_based_wrap",
        "state_dict_type": "FULL_STATE_DICT", "cpu_offload": True,
    }  # fmt: skip
    config = accelerate_config(full, None)
    assert config["distributed_type"] == "FSDP"
    assert config["fsdp_config"]["fsdp_reshard_after_forward"] is True
    assert config["fsdp_config"]["fsdp_offload_params"] is True
    grads_only = distributed.fsdp_options(recipe("hardware.fsdp=shard_grad_op"))
    assert grads_only["reshard_after_forward"] is False and grads_only["cpu_offload"] is False
    with pytest.raises(RecipeError, match="choose DeepSpeed or FSDP"):
        recipe("hardware.fsdp=full_shard", "hardware.deepspeed=zero2")


def test_fsdp_on_cpu_fails_before_launch():
    from harness.preflight import PreflightError, preflight

    with pytest.raises(PreflightError, match="FSDP on GPUs only"):
        preflight(recipe("hardware.fsdp=full_shard", "hardware.num_processes=2"))


def test_each_process_gets_its_share_of_the_threads_unless_the_user_set_them():
    one = load_recipe("minilm-banking77-cpu")
    four = load_recipe("minilm-banking77-cpu", ["hardware.num_processes=8", "hardware.num_machines=2"])
    assert cpu_threads_per_process(one, threads_alone=16, user_setting=None) == "16"
    assert cpu_threads_per_process(four, threads_alone=16, user_setting=None) == "4"  # 4 processes per machine
    assert cpu_threads_per_process(four, threads_alone=2, user_setting=None) == "1"
    assert cpu_threads_per_process(one, threads_alone=16, user_setting="3") == "3"
