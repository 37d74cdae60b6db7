r"""Exponential moving average of model weights with warm-up (as in the paper's released code).

After ``update_after_step`` plain copies, the decay grows as

.. math::
    \beta_n = \min\bigl(\beta_{max},\; 1 - (1 + n)^{-p}\bigr), \qquad p = 3/4,

where :math:`n` counts EMA updates past the warm-up, so early averages are not dominated by the
random initialisation (with p = 3/4, 0.999 is reached after about 10k updates). Call
:meth:`EMA.update` right *after* ``optimizer.step()``: the average must include the new weights.

When the module trains in bf16 and the optimizer keeps the fp32 master weights
(``train.bf16_weights``), :meth:`EMA.follow_master_weights` points the average at those masters:
a bf16 copy would round away updates smaller than its 8-bit mantissa resolves.
"""

import copy
import weakref
from collections.abc import Mapping, Sequence

import torch
from torch import nn


def ema_decay(update: int, beta: float, power: float, update_after_step: int) -> float:
    """Decay used at the ``update``-th call (0-based); 0 means "copy the online weights"."""
    n = update - update_after_step - 1
    if n <= 0:
        return 0.0
    return min(beta, 1.0 - (1.0 + n) ** -power)


class EMA(nn.Module):
    """Holds a frozen copy of ``model`` and moves it towards ``model`` on every :meth:`update`."""

    def __init__(
        self, model: nn.Module, beta: float = 0.999, power: float = 0.75, update_after_step: int = 0
    ) -> None:
        super().__init__()
        self.beta, self.power, self.update_after_step = beta, power, update_after_step
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._master_fragments: Mapping[str, Sequence[tuple[int, torch.Tensor]]] = {}
        self._partitioned = False

    def current_decay(self) -> float:
        return ema_decay(int(self.num_updates), self.beta, self.power, self.update_after_step)

    def follow_master_weights(
        self, fragments: Mapping[str, Sequence[tuple[int, torch.Tensor]]], partitioned: bool
    ) -> None:
        """Average the optimizer's fp32 master weights instead of the module's lower-precision ones.

        ``fragments`` names, for every parameter, the pieces of its master this rank holds: (offset
        into the flattened parameter, flat fp32 tensor the optimizer updates in place). With
        ``partitioned`` (ZeRO 1-2 on several ranks) each rank holds a disjoint part, so each averages
        its own part and :meth:`make_whole` assembles the rest before the average is read.
        """
        self._master_fragments, self._partitioned = fragments, partitioned
        self._paired_with = None

    def _pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(shadow, online) tensors by kind, matched by name once per online model and then reused."""
        paired = getattr(self, "_paired_with", None)
        if paired is None or paired() is not model:
            online = model.state_dict(keep_vars=False)
            floats, float_sources, others, other_sources = [], [], [], []
            for name, shadow_tensor in self.shadow.state_dict(keep_vars=False).items():
                if name in self._master_fragments:
                    flat = shadow_tensor.view(-1)
                    for offset, master in self._master_fragments[name]:
                        floats.append(flat[offset : offset + master.numel()])
                        float_sources.append(master.view(-1))
                elif shadow_tensor.is_floating_point() and online[name].dtype != shadow_tensor.dtype:
                    raise TypeError(
                        f"the EMA averages {shadow_tensor.dtype} weights, but {name} is "
                        f"{online[name].dtype}: average the full-precision master weights, not a copy"
                    )
                elif shadow_tensor.is_floating_point():
                    floats.append(shadow_tensor)
                    float_sources.append(online[name])
                else:
                    others.append(shadow_tensor)
                    other_sources.append(online[name])
            self._cached_pairs = (floats, float_sources, others, other_sources)
            self._paired_with = weakref.ref(
                model
            )  # a plain attribute would register the model as a submodule
        return self._cached_pairs

    @torch.no_grad()
    def make_whole(self) -> None:
        """Assemble the average from every rank's part (a collective: call it on every rank).

        A no-op unless the masters are partitioned; each element has one owner, so a sum of the parts,
        each rank contributing zeros elsewhere, is the whole average.
        """
        if not self._partitioned:
            return
        shadow = self.shadow.state_dict(keep_vars=False)
        for name, fragments in self._master_fragments.items():
            owned = torch.zeros_like(shadow[name]).view(-1)
            for offset, master in fragments:
                end = offset + master.numel()
                owned[offset:end] = shadow[name].view(-1)[offset:end]
            torch.distributed.all_reduce(owned)
            shadow[name].copy_(owned.view_as(shadow[name]))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``shadow = decay · shadow + (1 − decay) · model`` for floating tensors; copies the rest."""
        decay = self.current_decay()
        floats, float_sources, others, other_sources = self._pairs(model)
        sources = [t.to(device=s.device) for s, t in zip(floats, float_sources, strict=True)]
        torch._foreach_lerp_(floats, sources, 1.0 - decay)
        for shadow_tensor, source in zip(others, other_sources, strict=True):
            shadow_tensor.copy_(source)
        self.num_updates += 1
