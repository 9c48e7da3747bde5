"""Optimizer state read back lands on the parameters' device and dtype (issue 11: on a GPU the EMA
came back on the CPU and policy_update's ``ema * d + p * (1 - d)`` failed at iteration 1). The
parameters sit on ``meta`` here, a device other than the file's CPU, so this runs without a GPU."""

import pytest
import torch

from opgrpo_stages.formats import policy as policy_fmt


def _saved_state(tmp_path):
    """An optimizer file with moments (after one AdamW step) and an EMA, written from CPU float32."""
    params = {"a.weight": torch.nn.Parameter(torch.randn(3, 2)), "b.bias": torch.nn.Parameter(torch.randn(4))}
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3)
    sum(p.sum() for p in params.values()).backward()
    opt.step()
    ema = {k: p.detach().clone() * 0.5 for k, p in params.items()}
    path = tmp_path / "optimizer.safetensors"
    policy_fmt.write_optimizer(path, opt, list(params), ema, {"run": "t", "iteration": 0})
    return path, params


@pytest.mark.parametrize("device,dtype", [("meta", torch.float32), ("cpu", torch.bfloat16)])
def test_optimizer_state_follows_parameters(tmp_path, device, dtype):
    path, cpu_params = _saved_state(tmp_path)
    live = {k: torch.nn.Parameter(torch.zeros(p.shape, device=device, dtype=dtype)) for k, p in cpu_params.items()}
    opt = torch.optim.AdamW(list(live.values()), lr=1e-3)
    ema = policy_fmt.read_optimizer_into(path, opt, list(live))
    assert set(ema) == set(live)
    for k, p in live.items():
        assert (ema[k].device, ema[k].dtype) == (p.device, p.dtype), k
        state = opt.state[p]
        for moment in ("exp_avg", "exp_avg_sq"):
            assert (state[moment].device, state[moment].dtype) == (p.device, p.dtype), (k, moment)
        # policy_update's EMA update mixes the two: it must stay on the parameter's device and dtype
        mixed = ema[k] * 0.9 + p.detach() * 0.1
        assert (mixed.device, mixed.dtype) == (p.device, p.dtype)
    if device == "cpu":  # values survive the move (up to the cast)
        for k, p in cpu_params.items():
            torch.testing.assert_close(ema[k], (p.detach() * 0.5).to(dtype))


def test_ema_for_unknown_parameter_is_an_error(tmp_path):
    from opgrpo_stages.errors import ArtifactError

    params = {"a.weight": torch.nn.Parameter(torch.zeros(3, 2))}
    path = tmp_path / "optimizer.safetensors"  # an EMA but no moments yet (step 0)
    policy_fmt.write_optimizer(path, torch.optim.AdamW(list(params.values())), list(params),
                               {"a.weight": torch.ones(3, 2)}, {"run": "t", "iteration": 0})
    other = {"c.weight": torch.nn.Parameter(torch.zeros(3, 2))}
    with pytest.raises(ArtifactError, match="ema/a.weight"):
        policy_fmt.read_optimizer_into(path, torch.optim.AdamW(list(other.values())), list(other))
