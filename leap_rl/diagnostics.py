"""What a meta-learned φ looks like from outside: dormant units and how far each layer moved.

A shorter Leap path that comes from silenced features is the degenerate solution (LEAP.md §7),
so these are logged beside every path length:

- ReDo score (Sokar et al. 2023, "The dormant neuron phenomenon in deep RL"): for unit u of
  layer l, s_u = mean_x |a_u(x)| / mean_{u'∈l} mean_x |a_{u'}(x)| over the probe frames x, where
  a_u is the unit's output after its ReLU (a conv channel's mean also runs over positions).
  The unit is dormant when s_u ≤ τ.
- dead units: the encoder's last ReLU outputs that are zero on every probe frame (the older,
  stricter measure, kept for comparison with earlier runs).
- moved: ‖φ_l − φ_{0,l}‖ / ‖φ_{0,l}‖ per weight layer l (its weight and bias).
"""

from __future__ import annotations

import torch
from torch import nn

from leap_rl.config import ModelConfig
from leap_rl.models import ActorCritic, LayerSlice, dead_unit_fraction, encoder_layout


@torch.no_grad()
def unit_activity(model: ActorCritic, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean |activation| of every unit after each ReLU of the encoder, by layer name."""
    names = iter(layer.name for layer in encoder_layout(model))
    x = probe.float() / 255.0
    activity: dict[str, torch.Tensor] = {}
    for m in model.encoder.modules():
        if isinstance(m, nn.Sequential):
            continue  # containers: their leaves come next, in forward order
        x = m(x)
        if isinstance(m, nn.ReLU):
            a = x.abs()
            activity[next(names)] = a.mean(dim=(0, 2, 3)) if a.dim() == 4 else a.mean(dim=0)
    return activity


def redo_scores(activity: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """s_u = activity_u / mean(activity) within one layer."""
    return activity / activity.mean().clamp_min(eps)


def dormant_units(model: ActorCritic, probe: torch.Tensor, tau: float) -> dict[str, torch.Tensor]:
    """Indices of the units with a ReDo score ≤ tau, by layer name."""
    return {name: torch.nonzero(redo_scores(a) <= tau).flatten()
            for name, a in unit_activity(model, probe).items()}


def layer_movement(phi: torch.Tensor, phi0: torch.Tensor,
                   layout: tuple[LayerSlice, ...]) -> dict[str, float]:
    """‖φ_l − φ_{0,l}‖ / ‖φ_{0,l}‖ for every weight layer l (weight and bias together)."""
    out = {}
    for layer in layout:
        now = torch.cat([phi[layer.weight], phi[layer.bias]])
        then = torch.cat([phi0[layer.weight], phi0[layer.bias]])
        out[layer.name] = float(torch.linalg.vector_norm(now - then)
                                / torch.linalg.vector_norm(then).clamp_min(1e-12))
    return out


def encoder_diagnostics(model_cfg: ModelConfig, phi: torch.Tensor, phi0: torch.Tensor,
                        probe: torch.Tensor, tau: float) -> dict:
    """The figures of one φ that every ``meta_step`` row carries."""
    model = ActorCritic(model_cfg, num_actions=1)
    model.load_encoder(phi)
    dormant = dormant_units(model, probe, tau)
    layout = encoder_layout(model)
    units = {layer.name: layer.units for layer in layout}
    return {
        "dead_unit_fraction": dead_unit_fraction(model, probe),
        "dormant_fraction": sum(len(d) for d in dormant.values()) / sum(units.values()),
        "dormant_by_layer": {name: len(d) / units[name] for name, d in dormant.items()},
        "moved_by_layer": layer_movement(phi, phi0, layout),
    }
