"""The A2C loss as pure functions on tensors (Mnih et al. 2016, synchronous variant).

    R_t   = r_t + γ (1 − d_t) R_{t+1},   R_T = V(s_T)          n-step return, bootstrapped
    A_t   = R_t − V(s_t)                                       advantage (no gradient)
    loss  = −mean(A_t log π(a_t|s_t)) + c_v · mean((R_t − V(s_t))²) − c_e · mean(H[π(·|s_t)])

d_t = 1 when the transition at t ended an episode (terminated or truncated). A truncated
episode did not end in the MDP: its reward gets γ·V(final observation) added
(``fold_in_time_limit_bootstrap``) before the return is computed, so cutting the recursion
there is still correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leap_rl.config import A2CConfig


def clip_rewards(raw: torch.Tensor, cfg: A2CConfig) -> torch.Tensor:
    if cfg.reward_clip == "sign":
        return torch.sign(raw)
    if cfg.reward_clip == "clamp":
        return raw.clamp(-cfg.reward_clip_bound, cfg.reward_clip_bound)
    return raw


def time_limit_cut(terminated, truncated):
    """The envs whose episode a time limit cut without the MDP ending it: truncated and not
    terminated (numpy or torch bool arrays). Only these are bootstrapped through; an episode
    that terminated on the same step did end, so its value after the step is 0."""
    return truncated & ~terminated


def fold_in_time_limit_bootstrap(reward: torch.Tensor, cut: torch.Tensor, final_values: torch.Tensor,
                                 gamma: float) -> torch.Tensor:
    """r_t + γ·V(s_final) where ``cut`` (``time_limit_cut``), r_t elsewhere; a new tensor.

    ``final_values`` holds V of the cut envs' last real observations (``info['final_obs']``,
    not the reset frame the env returns in their place), one per True in ``cut``, in env order.
    With d_t = 1 at the cut, ``n_step_returns`` then gives R_t = r_t + γ·V(s_final) there: the
    return the episode would have had, had it gone on.
    """
    out = reward.clone()
    out[cut] += gamma * final_values
    return out


def n_step_returns(rewards: torch.Tensor, dones: torch.Tensor, bootstrap: torch.Tensor,
                   gamma: float) -> torch.Tensor:
    """rewards, dones: (T, N); bootstrap: (N,) = V(s_T). Returns (T, N)."""
    returns = torch.empty_like(rewards)
    running = bootstrap
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * (1.0 - dones[t]) * running
        returns[t] = running
    return returns


@dataclass(frozen=True)
class A2CLoss:
    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor


def a2c_loss(logits: torch.Tensor, values: torch.Tensor, actions: torch.Tensor,
             returns: torch.Tensor, cfg: A2CConfig) -> A2CLoss:
    """logits (B, A), values (B,), actions (B,), returns (B,) for B = T·N samples."""
    log_probs = F.log_softmax(logits, dim=-1)
    advantages = (returns - values).detach()
    policy_loss = -(advantages * log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)).mean()
    value_loss = F.mse_loss(values, returns)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1).mean()
    total = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
    return A2CLoss(total, policy_loss.detach(), value_loss.detach(), entropy.detach())
