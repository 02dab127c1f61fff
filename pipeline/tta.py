"""Test-time augmentation policies: which named views a policy merges. The views themselves (crops, flips,
rotations on batches already on the device) and their merge live in `infer`, the code an exported bundle shares."""

from __future__ import annotations

from .infer import FIVE, POLICIES, make_view, merge, merge_policy, stack_views  # noqa: F401 - the views live there


def views_for(policy: str) -> list[str]:
    return list(POLICIES[policy])


def policies_within(views: list[str]) -> list[str]:
    """The policies whose views were all computed."""
    have = set(views)
    return [p for p, vs in POLICIES.items() if set(vs) <= have]
