"""Data parallelism under `accelerate launch` with two CPU processes (gloo)."""

import json
import subprocess
import sys

import torch
from mlflow import MlflowClient

from pgbench.parallel import Processes, current


def test_each_process_takes_a_contiguous_share_and_its_own_seed():
    items = list(range(8))  # 4 prompts x 2 samples: a prompt's samples stay together
    first, second = Processes(rank=0, world=2), Processes(rank=1, world=2)
    assert (first.share(items), second.share(items)) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert (first.seed(3), second.seed(3)) == (6, 7) and first.main and not second.main


def test_alone_every_collective_is_the_identity():
    alone = current("cpu")
    assert (alone.rank, alone.world, alone.main) == (0, 1, True)
    assert alone.share([1, 2, 3]) == [1, 2, 3] and alone.seed(5) == 5
    assert alone.sum(2.5) == 2.5 and alone.mean(2.5) == 2.5 and alone.broadcast("x") == "x"
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert alone.combine_gradients_([param], mask, "token_mean") == 1.0
    assert param.grad.tolist() == [1.0, -2.0]


TWO_PROCESSES = """
import json, sys
import torch
from pgbench import parallel
from pgbench.config.verbs import resolve
from pgbench.engine.sampling import sample
from pgbench.models.policy import load_policy
from pgbench.train.trainer import Trainer
from pgbench.train.optimise import accumulate_gradients
from pgbench.train.update import prepare

overrides = dict(arg.split("=", 1) for arg in sys.argv[2:])
processes = parallel.current("cpu")
result = {"world": processes.world}

# 1. The combined gradients of each process's share = the gradient of the whole batch.
config = resolve(overrides)
policy = load_policy(overrides["model"], config.lora, torch.device("cpu"))
model, params = policy.model, list(policy.model.parameters())
torch.manual_seed(0)  # the same rollout of 4 prompts x 3 samples on both processes
rollout = sample(model, policy.tokenizer, ["Bonjour.", "Merci.", "Oui.", "Non."], 3, 10)
rewards = torch.rand(4, 3, generator=torch.Generator().manual_seed(1))
for how in ("token_mean", "seq_mean_token_mean"):
    config = resolve(overrides | {"loss.aggregation": how})
    prepared = prepare(config, config.estimator, model=model, rollout=rollout, rewards=rewards)
    accumulate_gradients(config, config.estimator, model, None, prepared, torch.arange(12))
    whole = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    mine = torch.arange(12)[processes.rank * 6 : (processes.rank + 1) * 6]  # 2 prompts each
    accumulate_gradients(config, config.estimator, model, None, prepared, mine)
    processes.combine_gradients_(params, prepared.mask[mine], how)
    result[how] = max((p.grad - w).abs().max().item() for p, w in zip(params, whole))
    model.zero_grad(set_to_none=True)

# 2. A run: both processes end with the same, trained weights; only the main one logs.
trainer = Trainer(resolve(overrides))
start = torch.cat([p.detach().flatten() for p in trainer.params])
summary = trainer.run()
end = torch.cat([p.detach().flatten() for p in trainer.params])
both = processes.gather(end[None])  # [2, n]
result |= {
    "weights_differ": (both[0] - both[1]).abs().max().item(),
    "weights_moved": (end - start).abs().max().item(),
    "run_id": summary["run_id"],
    "steps": summary["steps"],
}
processes.close()  # leaving the group before exit: no gloo thread aborts the shutdown
result["group_left"] = not torch.distributed.is_initialized()
if processes.main:
    with open(sys.argv[1], "w") as handle:
        json.dump(result, handle)
"""


def test_two_processes_train_like_one(run_overrides, tmp_path):
    """`accelerate launch` with 2 CPU processes: gradients combine exactly, weights agree,
    MLflow gets one run. (On CPU, accelerate's `--cpu` launcher starts one process unless it
    has MPI, so `--multi_gpu` starts the two, as torchrun would; they talk through gloo.)"""
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES)
    out = tmp_path / "result.json"
    overrides = run_overrides | {"trainer.steps": "3", "trainer.lr": "1e-3", "eval.every": "0"}
    # this interpreter's accelerate: its console script is on PATH only in an activated venv
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", "29517", str(script), str(out)]
    done = subprocess.run(
        [*launch, *(f"{k}={v}" for k, v in overrides.items())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert result["token_mean"] < 1e-6 and result["seq_mean_token_mean"] < 1e-6
    assert result["weights_differ"] == 0.0 and result["weights_moved"] > 0
    assert result["steps"] == 3 and result["group_left"]

    client = MlflowClient(run_overrides["tracking.uri"])
    runs = client.search_runs(client.get_experiment_by_name("fr_en").experiment_id)
    assert [run.info.run_id for run in runs] == [result["run_id"]]  # logged once
    history = client.get_metric_history(result["run_id"], "train/reward_mean")
    assert [m.step for m in history] == [1, 2, 3]
    tokens = client.get_metric_history(result["run_id"], "train/tokens")
    assert tokens[0].value > 0
