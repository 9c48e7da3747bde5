"""Issue 13, training maths: each rule against Flow-GRPO's / the paper's form, recomputed here from
the written formula (yifan123/flow_grpo@74db691: scripts/train_sd3.py, flow_grpo/ema.py,
flow_grpo/diffusers_patch/sd3_sde_with_logprob.py; OP-GRPO arXiv 2604.04142 section 4)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from opgrpo_stages import config as C
from opgrpo_stages import layout as L
from opgrpo_stages.formats import buffer as buffer_fmt
from opgrpo_stages.formats import policy as policy_fmt
from opgrpo_stages.formats import header, tables, tensorfile, trajectories
from opgrpo_stages.grpo import ema_update, group_advantages, kl_std, kl_to_reference, nonzero_advantage_samples
from opgrpo_stages.sde import sde_step, transition_mean
from opgrpo_stages.stages.buffer_update import buffer_update, update_buffer
from opgrpo_stages.stages.init_policy import init_policy
from opgrpo_stages.stages.policy_update import policy_update
from opgrpo_stages.stages.prompts import make_prompts
from opgrpo_stages.stages.rollout import rollout
from opgrpo_stages.stages.score import score

from conftest import tiny_config


def sd3_sigmas(steps=10, shift=3.0):
    t = np.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


# ---- 1. KL term -------------------------------------------------------------------------------

@pytest.mark.parametrize("j", range(9))
def test_kl_default_is_flow_grpos_form_on_the_sd3_schedule(j):
    """train_sd3.py: ((mean - mean_ref)**2).mean(dims) / (2 * std_dev_t**2),
    std_dev_t = a sqrt(sigma / (1 - sigma)) (sigma_1 in place of sigma at sigma = 1)."""
    sig = sd3_sigmas()
    s, sn, a = float(sig[j]), float(sig[j + 1]), 0.7
    g = torch.Generator().manual_seed(j)
    x, v, v_ref, eps = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(4))
    st = sde_step(v, x, s, sn, noise_level=a, sigma_max=float(sig[1]), noise=eps)
    mean_ref = transition_mean(x, v_ref, s, sn, a, float(sig[1]))
    ours = kl_to_reference(st.mean, mean_ref, kl_std(st)).double().numpy()

    xd, vd, vr = x.double().numpy(), v.double().numpy(), v_ref.double().numpy()
    std_t = a * math.sqrt(s / (1 - (float(sig[1]) if s == 1.0 else s)))
    dt = sn - s

    def mean_of(vel):
        return xd * (1 + std_t**2 / (2 * s) * dt) + vel * (1 + std_t**2 * (1 - s) / (2 * s)) * dt

    sq = ((mean_of(vd) - mean_of(vr)) ** 2).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(ours, sq / (2 * std_t**2), rtol=1e-4)
    gaussian = kl_to_reference(st.mean, mean_ref, kl_std(st, "gaussian")).double().numpy()
    np.testing.assert_allclose(gaussian, sq / (2 * std_t**2 * (-dt)), rtol=1e-4)  # the true Gaussian KL


# ---- 2. EMA -----------------------------------------------------------------------------------

def upstream_ema(initial, weights_after_step, accumulated_batches=8, decay=0.9, interval=8):
    """flow_grpo/ema.py as train_sd3.py drives it: the EMA starts at the initial weights; after
    every accumulated batch it is called with global_step (optimizer steps so far) and, when
    (global_step + 1) % interval == 0, does ema += (1 - min((1+s)/(10+s), decay)) (p - ema)."""
    ema = initial.clone().double()
    for s, p in enumerate(weights_after_step, start=1):
        for _ in range(accumulated_batches):
            if (s + 1) % interval == 0:
                ema += (1 - min((1 + s) / (10 + s), decay)) * (p.double() - ema)
    return ema


def test_ema_matches_flow_grpos_wrapper_over_many_steps():
    g = torch.Generator().manual_seed(0)
    initial = torch.randn(5, 3, generator=g)
    walk = [initial + 0.1 * k * torch.randn(5, 3, generator=g) for k in range(1, 101)]
    ema = {"w": initial.clone()}
    updated = [s for s, p in enumerate(walk, start=1) if ema_update(ema, {"w": p}, s, decay=0.9)]
    assert updated == list(range(7, 101, 8))
    torch.testing.assert_close(ema["w"].double(), upstream_ema(initial, walk), rtol=1e-5, atol=1e-6)
    # one call per optimizer step (repeats=1) is a different, slower EMA
    ema1 = {"w": initial.clone()}
    for s, p in enumerate(walk, start=1):
        ema_update(ema1, {"w": p}, s, decay=0.9, repeats=1)
    torch.testing.assert_close(ema1["w"].double(), upstream_ema(initial, walk, accumulated_batches=1),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ema1["w"], ema["w"])


@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _prepare(cfg):
    make_prompts(cfg, "heldout", L.prompts("heldout"))
    make_prompts(cfg, "train", L.prompts("train"))
    init_policy(cfg, **L.stage_paths("init_policy", cfg["run"], 0))


def _iteration(cfg, k):
    for stage in (rollout, score, buffer_update, policy_update):
        out = stage(cfg, k, **L.stage_paths(stage.__name__, cfg["run"], k))
    return out


def test_ema_in_the_optimizer_file_follows_the_upstream_schedule(stage_dir):
    # 1 optimizer step per iteration; update when (s + 1) % 2 == 0, i.e. after step 1 (iteration 0)
    # and step 3 (iteration 2), 2 repeats, decay min((1+s)/(10+s), 0.9)
    cfg = C.resolve_run(tiny_config(train={"minibatches": 1,
                                           "ema": {"enabled": True, "update_interval": 2, "repeats": 2}}), "flowgrpo")
    _prepare(cfg)
    run = cfg["run"]
    initial, _ = policy_fmt.read_policy(L.policy(run, -1))
    policies, emas, metrics = [], [], []
    for k in range(3):
        metrics.append(_iteration(cfg, k))
        policies.append(policy_fmt.read_policy(L.policy(run, k))[0])
        tensors, _meta, _ = tensorfile.read(
            L.optimizer(run, k), policy_fmt.OPTIMIZER_KIND, {})
        emas.append({n.removeprefix("ema/"): t for n, t in tensors.items() if n.startswith("ema/")})
    d1, d3 = (2 / 11) ** 2, (4 / 13) ** 2
    for name in initial:
        e0 = d1 * initial[name].double() + (1 - d1) * policies[0][name].double()
        torch.testing.assert_close(emas[0][name].double(), e0, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(emas[1][name], emas[0][name], rtol=0, atol=0)  # step 2: no update
        e2 = d3 * e0 + (1 - d3) * policies[2][name].double()
        torch.testing.assert_close(emas[2][name].double(), e2, rtol=1e-5, atol=1e-7)
    assert [m["optimizer_steps"] for m in metrics] == [1, 1, 1]
    assert [m["ema_updates"] for m in metrics] == [1, 0, 1]


def test_ema_old_reading_is_still_available(stage_dir):
    """{warmup: false, update_interval: 1, repeats: 1, init: first_update}: from the first updated
    weights, then ema = d ema + (1 - d) p after every optimizer step."""
    old = {"enabled": True, "warmup": False, "update_interval": 1, "repeats": 1, "init": "first_update"}
    cfg = C.resolve_run(tiny_config(train={"minibatches": 1, "ema": old}), "flowgrpo")
    _prepare(cfg)
    run = cfg["run"]
    for k in range(2):
        _iteration(cfg, k)
    p0, p1 = (policy_fmt.read_policy(L.policy(run, k))[0] for k in range(2))
    tensors = tensorfile.read(
        L.optimizer(run, 1), policy_fmt.OPTIMIZER_KIND, {})[0]
    for name in p0:
        torch.testing.assert_close(tensors[f"ema/{name}"], 0.9 * p0[name] + 0.1 * p1[name], rtol=1e-5, atol=1e-7)


# ---- 3. zero-advantage samples ----------------------------------------------------------------

def test_zero_advantage_selection_follows_flow_grpos_rule():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n, m = int(rng.integers(1, 60)), int(rng.integers(1, 6))
        adv = rng.normal(size=n) * (rng.random(n) < rng.random())
        kept = nonzero_advantage_samples(adv, m, np.random.default_rng(int(rng.integers(1 << 30))))
        # written from train_sd3.py: mask = adv != 0; if count % m: flip m - count % m of the
        # zero ones at random, when there are that many
        nonzero = set(np.flatnonzero(adv != 0).tolist())
        count, zeros = len(nonzero), n - len(nonzero)
        need = (m - count % m) if count % m else 0
        expected_size = count + need if zeros >= need else count
        assert nonzero <= set(kept.tolist()) and len(kept) == expected_size
        assert list(kept) == sorted(set(kept.tolist()))


def test_all_zero_advantages_train_nothing(stage_dir):
    cfg = C.resolve_run(tiny_config(train={"weight_decay": 0.5}), "flowgrpo")  # an optimizer step would move p
    _prepare(cfg)
    run = cfg["run"]
    rollout(cfg, 0, **L.stage_paths("rollout", run, 0))
    score(cfg, 0, **L.stage_paths("score", run, 0))
    rewards = tables.read(L.rewards(run, 0), "rewards")
    rewards["reward"] = 0.5  # every group's rewards equal: every advantage is exactly zero
    tables.write(L.rewards(run, 0), rewards, "rewards", header.of(cfg, 0))
    buffer_update(cfg, 0, **L.stage_paths("buffer_update", run, 0))
    m = policy_update(cfg, 0, **L.stage_paths("policy_update", run, 0))
    before, _ = policy_fmt.read_policy(L.policy(run, -1))
    after, _ = policy_fmt.read_policy(L.policy(run, 0))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert m["samples_trained"] == 0 and m["optimizer_steps"] == 0
    keep_all = C.deep_merge(cfg, {"train": {"drop_zero_advantage": False}})
    m = policy_update(keep_all, 0, **L.stage_paths("policy_update", run, 0))
    assert m["samples_trained"] == len(rewards) and m["optimizer_steps"] == 2


def test_update_trains_the_nonzero_advantage_samples(stage_dir):
    cfg = C.resolve_run(tiny_config(), "flowgrpo")
    _prepare(cfg)
    run = cfg["run"]
    for stage in (rollout, score, buffer_update):
        stage(cfg, 0, **L.stage_paths(stage.__name__, run, 0))
    samples = tables.read(L.samples(run, 0), "samples")
    rewards = tables.read(L.rewards(run, 0), "rewards")
    r = rewards["reward"].to_numpy().copy()
    r[samples["group"].to_numpy() == 0] = 1.0  # group 0 all equal: 4 zero advantages
    rewards["reward"] = r
    tables.write(L.rewards(run, 0), rewards, "rewards", header.of(cfg, 0))
    m = policy_update(cfg, 0, **L.stage_paths("policy_update", run, 0))
    adv = group_advantages(r, samples["group"].to_numpy(), std_mode="global")
    nonzero = int((adv != 0).sum())
    assert nonzero == 4  # group 1 has distinct rewards
    assert m["samples_trained"] == nonzero  # 4 divides into 2 minibatches: no zero one kept


# ---- 4. buffer decay by age -------------------------------------------------------------------

S, LAT = 3, (1, 2, 2)


def _cand(pid, reward, birth):
    return {"prompt_id": pid, "prompt": pid, "metadata": json.dumps({"prompt": pid}), "tag": "t",
            "reward": reward, "birth_iteration": birth,
            "latents": torch.zeros((S + 1, *LAT)), "logp_behavior": torch.zeros(S)}


def _run_buffer(seq, mode, scale=1.0, shift=0.0):
    buf = buffer_fmt.empty(S, LAT)
    for k, (cands, std) in enumerate(seq):
        cs = [_cand(p, scale * r + shift, b) for p, r, b in cands]
        buf = update_buffer(buf, cs, capacity=3, decay=0.95, mode=mode, iteration=k, age_penalty=0.1,
                            reward_std=scale * std)
    return buf


def _random_sequence(rng, iterations):
    seq = []
    for k in range(iterations):
        cands = [(f"p{int(rng.integers(6))}", float(rng.normal()), int(rng.integers(max(0, k - 4), k + 1)))
                 for _ in range(int(rng.integers(1, 4)))]
        seq.append((cands, float(rng.uniform(0.2, 2.0))))
    return seq


def test_age_decay_is_scale_and_shift_free_and_multiplicative_is_not():
    rng = np.random.default_rng(1)
    differs = 0
    for _ in range(25):  # update_buffer builds DataFrames: a few hundred calls keep this at seconds
        seq = _random_sequence(rng, iterations=8)
        a, b = _run_buffer(seq, "age"), _run_buffer(seq, "age", scale=3.0, shift=22.0)
        assert sorted(a.table["prompt_id"]) == sorted(b.table["prompt_id"])
        ma, mb = _run_buffer(seq, "multiplicative"), _run_buffer(seq, "multiplicative", scale=3.0, shift=22.0)
        differs += sorted(ma.table["prompt_id"]) != sorted(mb.table["prompt_id"])
    assert differs > 0  # the multiplicative rule depends on the reward's offset


def test_age_decay_counts_from_birth_and_reinsertion_keeps_aging():
    buf = update_buffer(buffer_fmt.empty(S, LAT), [_cand("a", 0.8, 0)], capacity=1, decay=0.95, mode="age",
                        iteration=0, age_penalty=0.1, reward_std=0.5)
    assert buf.table["reward"].tolist() == [0.8]
    # iteration 5: "a" replayed and won again with a fresh raw reward 0.9, born at 0 -> aged 5
    buf = update_buffer(buf, [_cand("a", 0.9, 0)], capacity=1, decay=0.95, mode="age", iteration=5,
                        age_penalty=0.1, reward_std=0.5)
    assert buf.table["raw_reward"].tolist() == [0.9]
    assert buf.table["reward"].tolist() == [pytest.approx(0.9 - 0.1 * 5 * 0.5)]
    assert buf.table["birth_iteration"].tolist() == [0]
    # a newborn with a lower raw reward but no age replaces it (0.7 > 0.9 - 0.1*6*0.5 = 0.6)
    buf = update_buffer(buf, [_cand("b", 0.7, 6)], capacity=1, decay=0.95, mode="age", iteration=6,
                        age_penalty=0.1, reward_std=0.5)
    assert buf.table["prompt_id"].tolist() == ["b"]


# ---- 10. truncation suffix regenerated by the ODE ---------------------------------------------

T_OFF = 2


@pytest.mark.parametrize("regenerate", ["ode", "sde"])
def test_replayed_suffix_is_regenerated_as_configured(stage_dir, regenerate):
    from opgrpo_stages.stages.common import load_backbone

    cfg = C.resolve_run(tiny_config(replay={"fraction": 1.0, "truncation": T_OFF, "capacity": 8,
                                            "regenerate": regenerate}), "flowgrpo")
    _prepare(cfg)
    run = cfg["run"]
    _iteration(cfg, 0)
    m = _iteration(cfg, 1)
    traj = trajectories.read(L.trajectories(run, 1))
    samples = tables.read(L.samples(run, 1), "samples")
    replay = (samples["source"] == "replay").to_numpy()
    assert replay.any()
    backbone = load_backbone(cfg, L.policy(run, 0))
    sig = [float(s) for s in traj.sigmas]
    idx = np.flatnonzero(replay)
    cond = backbone.encode_prompts([{"prompt": samples["prompt"].iloc[i]} for i in idx])
    n_train = traj.train_steps[~torch.as_tensor(replay.copy())][0]
    for j in range(T_OFF, traj.num_steps):
        x = traj.latents[idx, j]
        with torch.no_grad():
            v = backbone.velocity(x, sig[j], cond)
        euler = x + v * (sig[j + 1] - sig[j])  # paper Eq. 2
        if regenerate == "ode":
            torch.testing.assert_close(traj.latents[idx, j + 1], euler, rtol=1e-5, atol=1e-6)
            assert (traj.logp_old[idx, j] == 0).all() and not traj.train_steps[idx, j].any()
        else:
            assert not torch.allclose(traj.latents[idx, j + 1], euler, atol=1e-3)
            assert torch.equal(traj.train_steps[idx, j], n_train[j].expand(len(idx)))
    assert torch.equal(traj.train_steps[idx, :T_OFF], n_train[:T_OFF].expand(len(idx), T_OFF))
    # 12. the weight's spread is logged: recompute Eq. 11 over the kept steps (mean-reduced log-probs)
    w = torch.exp((traj.logp_old[idx, :T_OFF].double() - traj.logp_behavior[idx, :T_OFF].double()).sum(1))
    assert m["weight_min"] == pytest.approx(float(w.min()), rel=1e-5)
    assert m["weight_max"] == pytest.approx(float(w.max()), rel=1e-5)
    assert m["weight_std"] == pytest.approx(float(w.std(unbiased=False)), rel=1e-3, abs=1e-9)


def test_report_summarises_the_weight_spread():
    from opgrpo_stages.report.experiment import weight_spread
    from opgrpo_stages.report.tables import weight_section

    metrics = pd.DataFrame({"n_replay": [0, 2, 3], "weight_min": [1.0, 0.999, 0.998],
                            "weight_max": [1.0, 1.001, 1.003], "weight_std": [0.0, 0.0005, 0.001]})
    data = {"runs": {"opgrpo": {"metrics": metrics, "cfg": {"replay": {"correction": "sequence"}}},
                     "flowgrpo": {"metrics": metrics.assign(n_replay=0), "cfg": {"replay": {"correction": "sequence"}}}}}
    table = weight_spread(data)
    assert table["run"].tolist() == ["opgrpo"]  # runs without replay have no weight
    row = table.iloc[0]
    assert (row["weight_min"], row["weight_max"]) == (0.998, 1.003)
    assert row["weight_std_mean"] == pytest.approx(0.00075)  # iterations with replay only
    assert "Sequence weight" in weight_section(table) and weight_section(table.iloc[:0]) == ""
