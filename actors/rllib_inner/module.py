"""The RLModule: leap_rl's own actor-critic network, so φ is shared with the A2C path.

``LeapActorCriticModule`` wraps ``leap_rl.models.ActorCritic`` unchanged: the same encoder
(Mnih 2013 or Nature CNN, with or without FC as ``model.encoder_includes_fc`` says), the same
parameter order, the same orthogonal init, the same per-game policy and value heads. The
encoder is the meta-learned part: its parameters, in ``encoder.parameters()`` order, are the
flat θ that Leap sees, laid out exactly as ``ActorCritic.encoder_flat`` on the A2C path.

Every copy of the module (the Learner's, each EnvRunner's) is built from the same
``model_config``: the heads from the task's seed, the encoder from φ. So they start equal
without a weight sync.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import TargetNetworkAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.apis.target_network_api import TARGET_NETWORK_ACTION_DIST_INPUTS
from ray.rllib.core.rl_module.torch import TorchRLModule

from leap_rl.config import ModelConfig
from leap_rl.models import ActorCritic


def model_config(model: ModelConfig, seed: int, phi: torch.Tensor | None) -> dict[str, Any]:
    """The RLModule's ``model_config``: what every copy of the module is built from."""
    return {"leap_model": dataclasses.asdict(model), "seed": seed,
            "phi": None if phi is None else phi.detach().cpu().clone()}


def encoder_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """θ's tensors in the order of ``ActorCritic.encoder_flat`` (the flat φ)."""
    return list(module.net.encoder.parameters())


class LeapActorCriticModule(TorchRLModule, ValueFunctionAPI):
    """uint8 frames (B, 4, 84, 84) → policy logits, value; PPO and IMPALA."""

    def setup(self) -> None:
        mc = self.model_config
        cfg = ModelConfig(**mc["leap_model"])
        # The heads (and a random encoder when φ is None) from the task's seed, as the A2C path
        # builds them, without touching the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mc["seed"])
            self.net = ActorCritic(cfg, int(self.action_space.n))
        if mc["phi"] is not None:
            self.net.load_encoder(torch.as_tensor(mc["phi"]))

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        h = self.net.features(batch[Columns.OBS])
        # EMBEDDINGS lets the Learner's value loss reuse the trunk's pass (compute_values).
        return {Columns.ACTION_DIST_INPUTS: self.net.policy(h), Columns.EMBEDDINGS: h}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            embeddings = self.net.features(batch[Columns.OBS])
        return self.net.value(embeddings).squeeze(-1)


class LeapActorCriticAPPOModule(LeapActorCriticModule, TargetNetworkAPI):
    """APPO also needs a target copy of the policy (its KL/clip reference)."""

    def make_target_networks(self) -> None:
        self._target_net = make_target_network(self.net)

    def get_target_network_pairs(self):
        return [(self.net, self._target_net)]

    def forward_target(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        h = self._target_net.features(batch[Columns.OBS])
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: self._target_net.policy(h)}
