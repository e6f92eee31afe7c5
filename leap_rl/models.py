"""Actor-critic networks split into a meta-learned encoder and per-game heads.

The encoder's parameters live as views of ONE flat tensor (``ActorCritic.encoder_flat``), so
θ for Leap is available without a copy and φ is loaded with a single ``copy_``. Heads are
freshly initialised for every task: their sizes depend on the game (LEAP.md §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from leap_rl.config import ModelConfig

FRAMES = 4  # stacked grey frames (DeepMind preprocessing)


def _conv_trunk(network: str, layer_norm: bool) -> tuple[nn.Sequential, int, int]:
    """(conv layers, flattened conv output size, FC width)."""
    if network == "mnih2013":  # Mnih et al. 2013, the paper's network
        shapes = [(FRAMES, 16, 8, 4, 20), (16, 32, 4, 2, 9)]
        width = 256
    else:  # Nature CNN, Mnih et al. 2015
        shapes = [(FRAMES, 32, 8, 4, 20), (32, 64, 4, 2, 9), (64, 64, 3, 1, 7)]
        width = 512
    layers: list[nn.Module] = []
    for c_in, c_out, kernel, stride, side in shapes:  # side: the output's height and width
        layers.append(nn.Conv2d(c_in, c_out, kernel, stride=stride))
        if layer_norm:
            layers.append(nn.LayerNorm([c_out, side, side]))
        layers.append(nn.ReLU())
    layers.append(nn.Flatten())
    c_last, side_last = shapes[-1][1], shapes[-1][4]
    return nn.Sequential(*layers), c_last * side_last * side_last, width


def _orthogonal(module: nn.Module, gain: float) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain)
            nn.init.zeros_(m.bias)


class ActorCritic(nn.Module):
    """uint8 frames (B, 4, 84, 84) → (policy logits, value)."""

    def __init__(self, cfg: ModelConfig, num_actions: int, device: torch.device | str = "cpu") -> None:
        super().__init__()
        convs, conv_out, width = _conv_trunk(cfg.network, cfg.layer_norm)
        fc = nn.Sequential(nn.Linear(conv_out, width),
                           *([nn.LayerNorm(width)] if cfg.layer_norm else []), nn.ReLU())
        _orthogonal(convs, math.sqrt(2))
        _orthogonal(fc, math.sqrt(2))
        if cfg.encoder_includes_fc:
            self.encoder = nn.Sequential(convs, fc)
            self.torso = nn.Identity()
        else:
            self.encoder = convs
            self.torso = fc  # per-game, freshly initialised with the heads
        self.policy = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1)
        _orthogonal(self.policy, 0.01)
        _orthogonal(self.value, 1.0)
        # Views must be made after the move to the device: .to() replaces parameter storage.
        self.to(device)
        self.encoder_flat = _flatten_into_views(list(self.encoder.parameters()))

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.torso(self.encoder(obs.float() / 255.0))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(obs)
        return self.policy(h), self.value(h).squeeze(-1)

    def encoder_grad_into(self, out: torch.Tensor) -> torch.Tensor:
        """Write the encoder's raw gradients into the preallocated flat ``out``."""
        return torch.cat([p.grad.reshape(-1) for p in self.encoder.parameters()], out=out)

    def load_encoder(self, phi: torch.Tensor) -> None:
        with torch.no_grad():
            self.encoder_flat.copy_(phi)


def as_training_batch(frames: torch.Tensor) -> torch.Tensor:
    """The update's (B, 4, 84, 84) frames in channels-last layout.

    oneDNN's convolution forward + backward on a 40- or 80-frame batch takes 0.75–0.87× of the
    time on the CPU in this layout; acting on a few frames gains nothing (0.99–1.05×), so only
    the update uses it (``scripts/compare_before_after.py``, docs/BENCH.md round 2). The
    weights keep their layout (φ is unchanged).
    """
    return frames.contiguous(memory_format=torch.channels_last)


def _flatten_into_views(params: list[nn.Parameter]) -> torch.Tensor:
    """Move ``params`` into one flat tensor and make each parameter a view of it."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset:offset + n].view_as(p)
        offset += n
    return flat


@dataclass(frozen=True)
class LayerSlice:
    """Where one weight layer of the encoder lives in the flat φ; its units are its outputs
    (a conv's channels, a linear layer's rows)."""

    name: str
    """conv1, conv2, (conv3), fc: in forward order."""
    weight: slice
    weight_shape: tuple[int, ...]
    bias: slice

    @property
    def units(self) -> int:
        return self.weight_shape[0]


def encoder_layout(model: ActorCritic) -> tuple[LayerSlice, ...]:
    """The weight layers of ``model.encoder`` with their places in ``model.encoder_flat``
    (LayerNorm parameters, when present, lie between them and belong to no layer)."""
    flat = model.encoder_flat
    def place(t: torch.Tensor) -> slice:
        start = (t.data_ptr() - flat.data_ptr()) // flat.element_size()
        return slice(start, start + t.numel())
    layers, convs = [], 0
    for m in model.encoder.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            convs += isinstance(m, nn.Conv2d)
            name = f"conv{convs}" if isinstance(m, nn.Conv2d) else "fc"
            layers.append(LayerSlice(name, place(m.weight), tuple(m.weight.shape), place(m.bias)))
    return tuple(layers)


def encoder_size(cfg: ModelConfig) -> int:
    return ActorCritic(cfg, num_actions=1).encoder_flat.numel()


def initial_encoder(cfg: ModelConfig, seed: int) -> torch.Tensor:
    """A random initialisation φ_0 of the encoder (the same seed gives the same φ_0).

    Built with one thread: the orthogonal init's QR gives other bits with other thread counts.
    """
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ActorCritic(cfg, num_actions=1).encoder_flat.clone()
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def dead_unit_fraction(model: ActorCritic, probe: torch.Tensor) -> float:
    """Fraction of the encoder's last ReLU units that are zero on every probe frame.

    A shorter path that comes from silenced features is the degenerate Leap solution
    (LEAP.md §7); this number is logged beside every path length.
    """
    h = model.encoder(probe.float() / 255.0)
    if h.dim() > 2:
        h = h.flatten(1)
    return float((h <= 0).all(dim=0).float().mean())
