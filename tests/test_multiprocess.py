"""Several processes on the CPU (accelerate launch, gloo): sampling, evaluation and data-parallel training
give what one process gives, up to float rounding; only the main process writes and prints."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_sample_cli import erase

pytestmark = pytest.mark.slow
SMALL = ["--set", "data.images_per_prompt=4", "--set", "data.retain_images_per_prompt=2"]
SHORT_CRITIC = ["critic.steps=4", "critic.train_trajectories=8", "critic.train_epochs=2", "critic.width=16",
                "critic.blocks=2", "critic.prompts_per_step=2", "critic.samples_per_prompt=4", "critic.retain_loss=1.0",
                "critic.kl_weight=0.5", "critic.timesteps_per_pass=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args, n=2):
    """`accelerate launch --num_processes n -m erasecli ...` on this machine's CPUs, one thread each."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "erasecli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def lora(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "pytorch_lora_weights.safetensors"))


def rel_diff(a, b) -> float:
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    return (num / sum(float(a[k].pow(2).sum()) for k in a)) ** 0.5


def test_two_processes_sample_the_same_images_and_one_writes(tmp_path):
    args = ["sample", "--prompt", "a red handwritten digit three", "--prompt", "a blue digit 5", "-n", "3",
            "--steps", "5"]
    p = launch(*args, "--out", str(tmp_path / "two"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.count("wrote 6 images") == 1  # the main process reports, once
    assert erase(*args, "--out", str(tmp_path / "one")).returncode == 0
    files = sorted((tmp_path / "one").glob("*/*.png"))
    assert len(files) == 6
    for f in files:
        a = np.asarray(Image.open(f), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "two" / f.relative_to(tmp_path / "one")), dtype=np.int16)
        assert np.abs(a - b).max() <= 1
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]  # no staging folder left behind


@pytest.mark.parametrize("method", ["siss", "esd", "ac"])
def test_data_parallel_training_matches_one_process(method, tmp_path):
    args = ["unlearn", "--method", method, "--concept", "digit 3", "--steps", "4", *SMALL]
    p = launch(*args, "--out", str(tmp_path / "two"), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout)["summary"]  # one JSON document: only the main process printed
    assert summary["steps"] == 4 and summary["processes"] == 2  # the batch really was split over two
    assert erase(*args, "--out", str(tmp_path / "one")).returncode == 0
    assert rel_diff(lora(tmp_path / "one"), lora(tmp_path / "two")) < 1e-4
    rows = [[json.loads(x) for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    for a, b in zip(*rows):  # the logged losses are the whole batch's, not one process's share
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-7)


def test_two_processes_evaluate_like_one(tmp_path):
    args = ["evaluate", "--concept", "digit 3", "--set", "eval.samples_per_prompt=1",
            "--set", "eval.metrics=[ua,ira,cra,clip_score]", "--json"]
    p = launch(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    two = json.loads(p.stdout)["models"][0]["metrics"]
    one = json.loads(erase(*args).stdout)["models"][0]["metrics"]
    assert two.keys() == one.keys()
    for k in one:
        assert two[k] == pytest.approx(one[k], rel=1e-4)


def test_critic_rl_splits_its_rollouts_and_update_like_one_process(tmp_path):
    """Each process rolls out and scores its share of the chains (noise drawn for the whole batch), gathers the
    rest for the per-prompt advantages and the critic, and updates on its rows; gradients are summed. The
    retain term and the KL term are split too."""
    args = ["unlearn", "--method", "critic-rl", "--concept", "digit 3", "--steps", "2", *SMALL,
            *[x for kv in SHORT_CRITIC for x in ("--set", kv)]]
    p = launch(*args, "--out", str(tmp_path / "two"), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["summary"]["processes"] == 2
    assert erase(*args, "--out", str(tmp_path / "one")).returncode == 0
    one, two = lora(tmp_path / "one"), lora(tmp_path / "two")
    assert max(float(v.abs().max()) for v in one.values()) > 1e-3  # trained
    # float rounding in the rollouts (8 rows per UNet call instead of 16) moves log-probs by ~1e-6, and Adam's
    # first steps move every weight by ~lr whatever its gradient's size, so the deltas differ by ~6e-4 (measured);
    # without the gradients' all-reduce they differ by ~0.3
    assert rel_diff(one, two) < 5e-3
    rows = [[json.loads(x) for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    for a, b in zip(*rows):  # whole-batch figures: the rewards of every chain, the loss over every row
        for key in ("reward_forget", "loss", "L_r", "kl_base", "clipfrac"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key


def test_train_critic_says_it_runs_in_one_process(tmp_path):
    p = launch("train-critic", "--concept", "digit 3", "--out", str(tmp_path / "x"))
    assert p.returncode != 0
    assert "train-critic runs in one process" in p.stderr
    assert not (tmp_path / "x").exists()
