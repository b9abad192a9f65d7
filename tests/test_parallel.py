"""One run on several processes (torchrun, gloo, FSDP2 on the tiny model): the same run as on one process, resumable
after a kill -9 with the same or another number of processes, exportable, and stopped with the rank named when one
rank fails. The distributed stage of ``make test``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from envs.tasks import ArithmeticTask, ProblemStream
from pure_rl.checkpoint import CheckpointError, checkpoint_record, checkpoint_shards
from pure_rl.plots import read_metrics

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# Four prompts: two groups per rank on two processes; a checkpoint every iteration.
SETTING = ["train.parallel=fsdp", "train.prompts_per_iter=4", "train.checkpoint_every=1"]

pytestmark = pytest.mark.distributed


def launch(processes: int, args: list[str], **popen) -> subprocess.Popen:
    """``python -m pure_rl.train ARGS`` on one process, or under ``torchrun`` on several."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), *popen.pop("path", [])])}
    if processes == 1:
        cmd = [sys.executable, "-m", "pure_rl.train", *args]
    else:
        cmd = [TORCHRUN, "--standalone", "--nproc_per_node", str(processes), "-m", "pure_rl.train", *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def run(processes: int, args: list[str], **popen) -> str:
    proc = launch(processes, args, **popen)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def new_run(processes: int, run_dir: Path, iterations: int, *extra: str) -> str:
    args = ["--config", TINY, "--run-dir", str(run_dir), *SETTING, f"train.iterations={iterations}", *extra]
    return run(processes, args)


def resume(processes: int, run_dir: Path, iterations: int) -> str:
    args = ["--resume", str(run_dir), f"train.iterations={iterations}", "--allow-changes"]
    return run(processes, args)


def exported(run_dir: Path) -> dict[str, torch.Tensor]:
    from pure_rl.export import export_run

    out = run_dir.parent / f"{run_dir.name}-export"
    shutil.rmtree(out, ignore_errors=True)
    export_run(run_dir, out, dtype="float32")
    return load_file(out / "model.safetensors")


def kill_everything_of(run_dir: Path) -> None:
    """SIGKILL to torchrun and every worker of the job writing ``run_dir`` at once (as a scheduler ending the job's
    cgroup does; torchrun starts its workers in sessions of their own, so its process group is not enough)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and str(run_dir).encode() in cmdline:
            os.kill(int(proc.name), signal.SIGKILL)


def metrics(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "logs" / "scalars")


def assert_same_run(a: Path, b: Path, weights_atol: float = 1e-5) -> None:
    """Same trajectories (accuracy, steps, tokens, rewards: exactly), same losses and weights up to float reduction
    order: the gradient is summed over ranks in another order, and a row's logits come from batches of another
    size. In float32 that moved the weights by 3e-8 after 3 steps; one optimiser step moves a weight by up to the
    learning rate (1e-4, Adam's steps are about lr in size), so 1e-5 is 300x the noise and a tenth of one step."""
    ma, mb = metrics(a), metrics(b)
    assert [r["iteration"] for r in ma] == [r["iteration"] for r in mb]
    for ra, rb in zip(ma, mb):
        for key in ("accuracy", "steps_per_response", "response_tokens", "reward_return", "prm_reward_mean"):
            assert ra[key] == rb[key], (key, ra["iteration"], ra[key], rb[key])
        for key in ("loss", "kl", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (key, ra["iteration"])
    wa, wb = exported(a), exported(b)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < weights_atol


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    """The reference: 3 iterations on one process (FSDP over a group of one)."""
    run_dir = tmp_path_factory.mktemp("parallel") / "one"
    new_run(1, run_dir, 3)
    return run_dir


def test_two_processes_train_the_same_run_as_one(one_process_run, tmp_path):
    run_dir = tmp_path / "two"
    out = new_run(2, run_dir, 3)
    assert "8 episodes per iteration (4 prompts x 2, 2 processes (fsdp))" in out, out[-3000:]
    assert out.count("summary (3 iterations") == 1  # rank 0 alone prints and writes
    assert sorted(p.name for p in run_dir.glob("checkpoint.shards.*")) == ["checkpoint.shards.2", "checkpoint.shards.3"]
    assert_same_run(one_process_run, run_dir)
    # The weights moved: two runs that learned nothing would pass the comparison too.
    from agents.policy import load_model_and_tokenizer

    start = load_model_and_tokenizer("tiny")[0].state_dict()
    trained = exported(run_dir)
    assert max((trained[k] - start[k]).abs().max().item() for k in trained) > 1e-4  # 3 steps of lr 1e-4


def test_ddp_replicates_and_trains_the_same_run(one_process_run, tmp_path):
    # FSDP2 over a replicate-only mesh: the same run as the sharded one, checkpointed the same way.
    run_dir = tmp_path / "ddp"
    new_run(2, run_dir, 3, "train.parallel=ddp")
    assert_same_run(one_process_run, run_dir)


def test_a_killed_two_process_run_resumes_on_one_process_and_back(one_process_run, tmp_path):
    # kill -9 of the whole torchrun job once a checkpoint exists, before the run ends.
    run_dir = tmp_path / "killed"
    args = ["--config", TINY, "--run-dir", str(run_dir), *SETTING, "train.iterations=40"]
    proc = launch(2, args)
    deadline = time.time() + 300
    while time.time() < deadline and (checkpoint_record(run_dir) or {}).get("iteration", 0) < 1:
        time.sleep(0.05)
    kill_everything_of(run_dir)
    proc.communicate(timeout=60)
    killed_at = checkpoint_record(run_dir)["iteration"]
    assert 1 <= killed_at < 40 and not (run_dir / "summary.json").exists()
    # Iterations 1..2 were trained by two processes; the run is cut back to 2 iterations, then 3 on one process.
    if killed_at > 2:
        pytest.skip(f"the job reached iteration {killed_at} before the kill landed (a loaded machine)")
    resume(2, run_dir, 2)
    resume(1, run_dir, 3)
    assert_same_run(one_process_run, run_dir)


def test_a_one_process_run_resumes_on_two_processes(one_process_run, tmp_path):
    run_dir = tmp_path / "grown"
    new_run(1, run_dir, 1)
    resume(2, run_dir, 3)
    assert_same_run(one_process_run, run_dir)


def saved_model_tensors(run_dir: Path) -> list[str]:
    """The model tensors the shard folder of ``run_dir``'s checkpoint holds (from DCP's metadata)."""
    import torch.distributed.checkpoint as dcp

    shards = checkpoint_shards(run_dir)
    return [k for k in dcp.FileSystemReader(shards).read_metadata().state_dict_metadata if k.startswith("model.")]


def test_lora_adapters_train_under_fsdp_as_on_one_process(one_process_run, tmp_path):
    lora = ["lora.rank=4", "train.lr=1e-3"]
    new_run(1, tmp_path / "one", 2, *lora)
    new_run(2, tmp_path / "two", 2, *lora)
    # Checkpoints hold the adapters only (the frozen base, its tied head included, is the start model's); a full
    # fine-tuning run's hold every weight. Export merges the adapters.
    saved = saved_model_tensors(tmp_path / "two")
    assert saved and all("lora_" in k for k in saved), [k for k in saved if "lora_" not in k][:3]
    assert not any("lora_" in k for k in saved_model_tensors(one_process_run))
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_fsdp_mixed_precision_gives_the_numbers_of_the_autocast_path(tmp_path):
    # One process each: autocast over float32 weights, and FSDP's MixedPrecisionPolicy (bf16 all-gathers, float32
    # masters and gradient reduction). The matmuls see the same bf16 weights; only the norm weights and the
    # embedding's output are rounded to bf16 under FSDP, hence close, not equal.
    args = ["--config", TINY, "train.precision=bf16-mixed", "train.iterations=2"]
    run(1, [*args, "--run-dir", str(tmp_path / "autocast")])
    run(1, [*args, "--run-dir", str(tmp_path / "fsdp"), "train.parallel=fsdp"])
    ma, mb = metrics(tmp_path / "autocast"), metrics(tmp_path / "fsdp")
    for ra, rb in zip(ma, mb, strict=True):
        assert ra["response_tokens"] == rb["response_tokens"] and ra["accuracy"] == rb["accuracy"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)  # measured 2e-7
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-2)  # measured 3e-4
        assert ra["grad_norm"] != rb["grad_norm"]  # two different paths, not one run twice


FAILING_PRM = """
import json
import os
from pure_rl.registry import register
from envs.rule_prm import ArithmeticRulePRM


class FailsOnRankOne(ArithmeticRulePRM):
    def score(self, questions, steps):
        if os.environ.get("RANK") == "1":
            raise RuntimeError("the PRM service of this rank is gone")
        return super().score(questions, steps)


@register("prm", "fails_on_rank_one")
def fails_on_rank_one(cfg):
    return FailsOnRankOne()
"""


def test_one_failing_rank_stops_the_whole_job_naming_the_rank(tmp_path):
    (tmp_path / "failing_prm.py").write_text(FAILING_PRM)
    args = ["--config", TINY, "--run-dir", str(tmp_path / "run"), *SETTING, "env.prm=fails_on_rank_one"]
    args += ["plugins=[failing_prm]"]
    t0 = time.time()
    proc = launch(2, args, path=[str(tmp_path)])
    out, _ = proc.communicate(timeout=300)
    took = time.time() - t0
    assert proc.returncode != 0
    assert "the PRM service of this rank is gone" in out
    assert "rank: 1" in out or "[rank1]" in out, out[-3000:]  # torchrun's failure summary names the rank
    # Rank 0 waits in the batch gather; torchrun ends it as soon as rank 1 exits (not a collective's timeout).
    assert took < 120, took


def test_a_torchrun_launch_without_a_parallel_mode_is_refused(tmp_path):
    proc = launch(2, ["--config", TINY, "--run-dir", str(tmp_path / "run")])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "train.parallel=none: add train.parallel=fsdp" in out, out[-3000:]
    assert not (tmp_path / "run").exists()


# --- the pieces, on one process ---------------------------------------------------------------------------------


def test_sharded_streams_together_draw_the_one_process_order():
    source = ArithmeticTask(1, seed=3)
    whole = ProblemStream(source, seed=3)
    shards = [ProblemStream(source, seed=3, shard=(r, 2)) for r in range(2)]
    for _ in range(3):
        expected = whole.next_indexed(6)
        drawn = [x for s in shards for x in s.next_indexed(3)]
        assert [(i, p.question) for i, p in drawn] == [(i, p.question) for i, p in expected]
    assert all(s.position == whole.position for s in shards)


def test_a_row_samples_the_same_tokens_whatever_else_is_in_the_batch():
    from agents.generation import TransformersBackend
    from agents.policy import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer("tiny")
    backend = TransformersBackend(model, tokenizer, temperature=1.0, seed=0)
    prompts = [tokenizer.encode(f"Tom has {n} apples.") for n in (3, 3, 17, 17, 250)]
    seeds = [11, 11, 22, 22, 33]
    together = backend.generate(prompts, [12] * 5, stop_at_step=False, seeds=seeds)
    alone = backend.generate(prompts[2:4], [12] * 2, stop_at_step=False, seeds=seeds[2:4])
    assert [g.token_ids for g in together[2:4]] == [g.token_ids for g in alone]
    # Different seeds draw differently (the test can fail): the two groups' rows are not copies of each other.
    assert together[0].token_ids != together[2].token_ids


def test_a_damaged_shard_falls_back_to_the_previous_checkpoint(tmp_path, capsys):
    from pure_rl.checkpoint import load_checkpoint
    from pure_rl.train import main

    run_dir = tmp_path / "run"
    main(["--config", TINY, "--run-dir", str(run_dir), "train.parallel=fsdp", "train.checkpoint_every=1"])
    assert load_checkpoint(run_dir)["iteration"] == 2
    shard = next((run_dir / "checkpoint.shards.2").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    ckpt = load_checkpoint(run_dir)
    assert ckpt["iteration"] == 1 and ckpt["shards"] == "checkpoint.shards.1"
    warning = capsys.readouterr().out
    assert "checkpoint.shards.2 is damaged or incomplete" in warning and shard.name in warning, warning
    # Both damaged: nothing is loaded.
    shard1 = next((run_dir / "checkpoint.shards.1").glob("*.distcp"))
    shard1.write_bytes(shard1.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="not usable either"):
        load_checkpoint(run_dir)


# --- vLLM: one engine per rank -------------------------------------------------------------------------------------

VLLM = ["policy.backend=vllm", "policy.max_model_len=512", "policy.vllm_kv_cache_gib=1"]


@pytest.mark.vllm
def test_vllm_engines_on_two_ranks_follow_the_sharded_policy(warm_tiny_path, tmp_path):
    # One engine per rank in the job's process group, synced from FSDP2 shards one gathered tensor at a time: its
    # greedy tokens equal those of an unsharded model holding the weights DCP gathers (a change the sync missed
    # would show as the engine's old tokens), for the whole policy and for LoRA adapters merged as they stream.
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    worker = str(ROOT / "tests" / "parallel_vllm_worker.py")
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", worker, str(warm_tiny_path), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(out.read_text())
    for case in ("full", "lora"):
        r = result[case]
        assert r["synced"] != r["before"], f"{case}: the change must show in greedy output for the test to mean much"
        assert r["synced"] == r["reference"], case
    # Per-request seeds: rank 1's two rows, drawn in a batch of two, are rank 0's last two, drawn in a batch of
    # four; the two samples of one prompt group differ.
    on_rank_0, on_rank_1 = result["seeded"]
    assert on_rank_0[2:] == on_rank_1
    assert on_rank_0[0] != on_rank_0[1] and on_rank_0[2] != on_rank_0[3]


@pytest.mark.vllm
def test_two_processes_with_vllm_engines_train_the_same_run_as_one(tmp_path):
    # The same as the transformers-backend comparison with a vLLM engine per rank: per-request seeds make each
    # row's draws independent of its batch and rank, and the sharded sync keeps every engine on the trained weights.
    one, two = tmp_path / "one", tmp_path / "two"
    new_run(1, one, 2, *VLLM, "train.parallel=none")
    out = new_run(2, two, 2, *VLLM)
    assert "(vllm)" in out and "2 processes (fsdp)" in out, out[-3000:]
    # Looser weights than the transformers comparison: the old log-probs of the ratio and the KL are the engine's
    # own (train.old_log_probs=generation), computed in batches of another size on each rank. Differences of ~1e-7
    # there move Adam's first steps by up to the learning rate on coordinates whose gradient is near zero (2 steps:
    # 1.7e-5 measured); 1e-4 is one step of lr 1e-4, still far below what a different trajectory would give.
    assert_same_run(one, two, weights_atol=1e-4)


# --- Ray: rollouts on Ray workers, one trainer ---------------------------------------------------------------------


def test_rollouts_on_two_ray_workers_train_the_same_run_and_resume(one_process_run, tmp_path):
    # Two TorchRL collectors as actors on a local Ray cluster, each with its own env shard, PRM and policy copy,
    # fed the trainer's weights after every update: the same trajectories as one process (per-group seeds), and a
    # resume puts the workers at the checkpoint's data position with the checkpoint's weights.
    run_dir = tmp_path / "ray"
    ray = ["train.parallel=none", "train.ray_rollout_workers=2"]
    out = new_run(1, run_dir, 2, *ray)
    assert "Started a local Ray instance" in out, out[-3000:]
    resume(1, run_dir, 3)
    assert_same_run(one_process_run, run_dir)
