"""Plain PyTorch ground truth of the fused router, with the kernel's tie rule.

Every selection is a stable descending sort, so among equal scores the lower group or expert
index wins; that is the rule the kernel follows (``torch.topk`` leaves the tie order unspecified,
which is why ``model_core``'s ``group_limited_topk`` is not used as the tie oracle).
"""

from __future__ import annotations

import torch

__all__ = ["group_topk_route_reference"]


def _stable_desc(x: torch.Tensor) -> torch.Tensor:
    return torch.sort(x, dim=-1, descending=True, stable=True).indices


def group_topk_route_reference(
    logits_TE: torch.Tensor,
    expert_bias_E: torch.Tensor,
    n_group: int,
    topk_group: int,
    top_k: int,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, E) logits -> topk_ids (T, K) int64, topk_weights (T, K) fp32 (see ``op.group_topk_route``)."""
    T, E = logits_TE.shape
    per = E // n_group
    scores_TE = torch.sigmoid(logits_TE.float())
    biased_TE = scores_TE + expert_bias_E.float()
    grouped_TGP = biased_TE.view(T, n_group, per)
    best2_TG2 = grouped_TGP.gather(2, _stable_desc(grouped_TGP)[..., :2])
    group_score_TG = best2_TG2[..., 0] + best2_TG2[..., 1]
    kept_TG = torch.zeros(T, n_group, dtype=torch.bool, device=logits_TE.device)
    kept_TG.scatter_(1, _stable_desc(group_score_TG)[:, :topk_group], True)
    masked_TE = biased_TE.masked_fill(~kept_TG.repeat_interleave(per, dim=1), float("-inf"))
    ids_TK = _stable_desc(masked_TE)[:, :top_k]
    w_TK = scores_TE.gather(1, ids_TK)
    if top_k > 1:
        w_TK = w_TK / (w_TK.sum(dim=-1, keepdim=True) + 1e-20)
    return ids_TK, w_TK * routed_scaling_factor
