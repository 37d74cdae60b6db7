"""Where a DeepSpeed bf16 engine keeps the fp32 master weights, so that the EMA can average them.

With ``train.bf16_weights`` the module holds bf16 weights and DeepSpeed's optimizer wrapper holds the
fp32 masters it updates: whole on every rank without ZeRO (``FP16_UnfusedOptimizer.fp32_groups``), a
flat partition per rank with ZeRO 1-2 (each parameter's ``_hp_mapping`` says which slice of it this
rank owns). Both are updated in place, so the tensors found here stay valid for the whole run.
"""

import torch

from fmboost.errors import ConfigError

Fragments = dict[str, list[tuple[int, torch.Tensor]]]


def master_weight_fragments(engine) -> Fragments:
    """Every trainable parameter's name → the (offset into the flattened parameter, flat fp32 tensor)
    pieces of its master weights on this rank; an empty list where another rank owns all of it."""
    trainable = {name: param for name, param in engine.module.named_parameters() if param.requires_grad}
    optimizer = engine.optimizer
    if engine.zero_optimization():
        fragments: Fragments = {}
        for name, param in trainable.items():
            mapping = getattr(param, "_hp_mapping", None)
            pieces = [] if mapping is None else [(mapping.lp_fragment_address.start, mapping.hp_fragment)]
            fragments[name] = pieces
        return fragments
    if hasattr(optimizer, "fp16_groups") and hasattr(optimizer, "fp32_groups"):
        names = {id(param): name for name, param in trainable.items()}
        return {
            names[id(low)]: [(0, master.view(-1))]
            for low_group, master_group in zip(optimizer.fp16_groups, optimizer.fp32_groups, strict=True)
            for low, master in zip(low_group, master_group, strict=True)
        }
    raise ConfigError(
        f"train.bf16_weights: DeepSpeed's {type(optimizer).__name__} keeps no fp32 master weights the "
        "EMA can read; use deepspeed.zero_optimization.stage 0, 1 or 2 with bf16"
    )
