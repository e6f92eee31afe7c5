"""Guards that keep φ's units alive while Leap moves it (none of them is in the paper).

- ``bound_unit_steps``: a meta-step may move each unit's incoming weights and bias (w_u, b_u)
  by at most κ·‖(w_u, b_u)‖. Then for any input x its pre-activation z_u = w_u·x + b_u moves by
  |Δz_u| ≤ ‖(Δw_u, Δb_u)‖·‖(x, 1)‖ ≤ κ·‖(w_u, b_u)‖·‖(x, 1)‖: a bounded fraction of the unit's
  own scale. Adam's sign-like first steps move all of a unit's thousands of weights by lr in a
  coherent direction; this caps what that can do to the unit (LEAP.md §8).
- ``DormantRecycler``: ReDo (Sokar et al. 2023) applied to φ after each meta-step. A dormant
  unit gets fresh incoming weights (the layer's own initialization: orthogonal, gain √2, zero
  bias) and zero outgoing weights inside the encoder, so the network's function is unchanged
  at the moment of recycling; the meta-optimizer's moments of every touched coordinate are
  reset by the learner. Outgoing weights outside the encoder (heads, or the FC layer when it
  is not meta-learned) are fresh for every task anyway.
"""

from __future__ import annotations

import math

import torch

from leap_rl.config import ModelConfig
from leap_rl.diagnostics import dormant_units
from leap_rl.models import ActorCritic, LayerSlice, encoder_layout


def bound_unit_steps(before: torch.Tensor, after: torch.Tensor, layout: tuple[LayerSlice, ...],
                     max_ratio: float) -> int:
    """Scale down, in ``after``, every unit's step from ``before`` to ≤ max_ratio·‖(w_u, b_u)‖.

    Returns how many units were scaled. Coordinates outside the layers (LayerNorm) are left.
    """
    scaled = 0
    for layer in layout:
        w0 = before[layer.weight].view(layer.units, -1)
        b0 = before[layer.bias].view(layer.units, 1)
        w1 = after[layer.weight].view(layer.units, -1)
        b1 = after[layer.bias].view(layer.units, 1)
        step = torch.linalg.vector_norm(torch.cat([w1 - w0, b1 - b0], dim=1), dim=1)
        limit = max_ratio * torch.linalg.vector_norm(torch.cat([w0, b0], dim=1), dim=1)
        over = step > limit
        if over.any():
            scale = torch.where(over, limit / step.clamp_min(1e-30), torch.ones_like(step))
            w1.copy_(w0 + (w1 - w0) * scale[:, None])
            b1.copy_(b0 + (b1 - b0) * scale[:, None])
            scaled += int(over.sum())
    return scaled


def recycle_units(phi: torch.Tensor, layout: tuple[LayerSlice, ...],
                  units: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """Re-initialize the given units of φ in place; return the flat indices it changed.

    ``units`` maps a layer name to unit indices. The incoming rows get the rows of a fresh
    orthogonal (gain √2) matrix of the layer's shape, their biases 0; the next layer's weights
    from these units (a conv's input channels, or the FC columns fed by those channels) are 0.
    """
    touched = []
    index = torch.arange(phi.numel())
    chosen = [(i, layer, units[layer.name]) for i, layer in enumerate(layout)
              if layer.name in units and len(units[layer.name]) > 0]
    for _i, layer, ids in chosen:
        fresh = torch.empty(layer.units, math.prod(layer.weight_shape[1:]))
        torch.nn.init.orthogonal_(fresh, math.sqrt(2), generator=generator)
        phi[layer.weight].view(layer.units, -1)[ids] = fresh[ids].to(phi)
        phi[layer.bias][ids] = 0.0
        touched += [index[layer.weight].view(layer.units, -1)[ids].flatten(), index[layer.bias][ids]]
    # Outgoing weights last, so that a recycled unit of the next layer does not bring back
    # a connection from a recycled unit through its fresh row.
    for i, layer, ids in chosen:
        if i + 1 < len(layout):
            nxt = layout[i + 1]
            # (out, in_units, per-unit inputs): a conv's kernel taps, or FC inputs that a
            # channel feeds (Flatten keeps channels outermost).
            phi[nxt.weight].view(nxt.units, layer.units, -1)[:, ids] = 0.0
            touched.append(index[nxt.weight].view(nxt.units, layer.units, -1)[:, ids].flatten())
    return torch.cat(touched) if touched else torch.zeros(0, dtype=torch.long)


class DormantRecycler:
    """Finds φ's ReDo-dormant units on the probe frames and recycles them (one call per meta-step)."""

    def __init__(self, model_cfg: ModelConfig, probe: torch.Tensor, tau: float, seed: int) -> None:
        self.model = ActorCritic(model_cfg, num_actions=1)
        self.layout = encoder_layout(self.model)
        self.probe = probe
        self.tau = tau
        self.seed = seed

    def __call__(self, phi: torch.Tensor, version: int) -> tuple[dict[str, list[int]], torch.Tensor]:
        """Recycle in place; (recycled unit indices by layer, flat indices changed).

        The fresh weights depend only on (seed, version), so every runtime recycles alike.
        """
        self.model.load_encoder(phi)
        dormant = dormant_units(self.model, self.probe, self.tau)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + version)
        touched = recycle_units(phi, self.layout, dormant, generator)
        return {name: ids.tolist() for name, ids in dormant.items()}, touched
