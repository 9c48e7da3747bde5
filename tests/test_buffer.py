"""OP-GRPO replay buffer rules (paper section 4.1)."""

import json

import pandas as pd
import pytest
import torch

from opgrpo_stages.formats import buffer as buffer_fmt
from opgrpo_stages.stages.buffer_update import select_candidates, update_buffer

S, LAT = 3, (1, 2, 2)


def cand(pid, reward, birth=0, fill=None):
    fill = reward if fill is None else fill
    return {"prompt_id": pid, "prompt": f"prompt {pid}", "metadata": json.dumps({"prompt": f"prompt {pid}"}),
            "tag": "t", "reward": reward, "birth_iteration": birth,
            "latents": torch.full((S + 1, *LAT), float(fill)), "logp_behavior": torch.full((S,), float(fill))}


def entries(buf):
    return dict(zip(buf.table["prompt_id"], buf.table["reward"].round(6)))


def test_best_of_group_is_selected():
    samples = pd.DataFrame({"group": [0, 0, 0, 1, 1, 1]})
    rewards = pd.DataFrame({"reward": [0.1, 0.9, 0.5, 0.7, 0.7, 0.2]})
    assert select_candidates(samples, rewards) == [1, 3]  # ties: the first


def test_insert_while_room_and_tensors_follow_rows():
    b = update_buffer(buffer_fmt.empty(S, LAT), [cand("a", 0.5), cand("b", 0.3)], capacity=4, decay=1.0)
    assert entries(b) == {"a": 0.5, "b": 0.3}
    assert float(b.latents[1].mean()) == pytest.approx(0.3) and float(b.logp_behavior[0, 0]) == pytest.approx(0.5)


def test_one_entry_per_prompt_replaced_only_if_higher():
    b = update_buffer(buffer_fmt.empty(S, LAT), [cand("a", 0.5)], capacity=4, decay=1.0)
    b = update_buffer(b, [cand("a", 0.4, fill=9)], capacity=4, decay=1.0)
    assert entries(b) == {"a": 0.5} and float(b.latents.mean()) == pytest.approx(0.5)
    b = update_buffer(b, [cand("a", 0.8, birth=3)], capacity=4, decay=1.0)
    assert entries(b) == {"a": 0.8} and len(b) == 1 and int(b.table["birth_iteration"].iloc[0]) == 3


def test_full_buffer_replaces_lowest_only_if_higher():
    b = update_buffer(buffer_fmt.empty(S, LAT), [cand("a", 0.5), cand("b", 0.2)], capacity=2, decay=1.0)
    b = update_buffer(b, [cand("c", 0.1)], capacity=2, decay=1.0)
    assert entries(b) == {"a": 0.5, "b": 0.2}
    b = update_buffer(b, [cand("c", 0.3)], capacity=2, decay=1.0)
    assert entries(b) == {"a": 0.5, "c": 0.3}
    assert len(b) == 2


def test_stepwise_decay_makes_old_entries_replaceable():
    b = update_buffer(buffer_fmt.empty(S, LAT), [cand("a", 0.5)], capacity=1, decay=0.5)
    assert entries(b) == {"a": 0.5}
    b = update_buffer(b, [], capacity=1, decay=0.5)
    assert entries(b) == {"a": 0.25} and float(b.table["raw_reward"].iloc[0]) == 0.5
    b = update_buffer(b, [cand("z", 0.2)], capacity=1, decay=0.5)  # 0.125 after decay < 0.2
    assert entries(b) == {"z": 0.2}
    b = update_buffer(b, [cand("z", 0.15)], capacity=1, decay=0.5)  # same prompt: 0.1 decayed < 0.15
    assert entries(b) == {"z": 0.15}


def test_capacity_is_never_exceeded():
    b = buffer_fmt.empty(S, LAT)
    for it in range(5):
        b = update_buffer(b, [cand(f"p{it}-{j}", 0.1 * j) for j in range(4)], capacity=3, decay=0.9)
        assert len(b) <= 3


def test_previous_buffer_file_is_not_modified(tmp_path):
    b0 = update_buffer(buffer_fmt.empty(S, LAT), [cand("a", 0.5)], capacity=2, decay=0.9)
    p0 = (tmp_path / "b0.safetensors", tmp_path / "b0.parquet")
    buffer_fmt.write(*p0, b0)
    before = [p.read_bytes() for p in p0]
    b1 = update_buffer(buffer_fmt.read(*p0), [cand("b", 0.9), cand("a", 0.7)], capacity=2, decay=0.9)
    buffer_fmt.write(tmp_path / "b1.safetensors", tmp_path / "b1.parquet", b1)
    assert [p.read_bytes() for p in p0] == before
    assert entries(buffer_fmt.read(*p0)) == {"a": 0.5}
    assert entries(b1) == {"a": 0.7, "b": 0.9}
