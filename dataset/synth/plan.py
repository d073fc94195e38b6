"""The catalogue plan: item ids, designs, colour-variant groups and the list of clips.

Planning is cheap and happens in the parent process; every item and clip then
renders from its own seeded generator (``np.random.default_rng([seed, stream, k])``),
so the data do not depend on the number of workers or on task order.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from dataset.identity import contest_instance_id
from dataset.synth.config import SynthConfig
from dataset.synth.garments import Design, colour_variant, distinct, random_design

# Random streams: one per purpose, so that adding a knob's use elsewhere does not shift the others.
GROUPS, ITEM_DESIGN, SHOP, CLIP, EXTRA_DESIGN, EXTRA_CLIP = range(6)

UNCATALOGUED_BASE = 100_000
"""Not-in-catalogue clips get ids ``100000 + first_id + j``: 6 digits, never an item id (< 100000)."""


@dataclass(frozen=True)
class ItemPlan:
    """A catalogue item: its garment and which colour-variant group (if any) it belongs to."""

    item_id: str
    index: int
    design: Design
    instance_id: int
    group: int | None


@dataclass(frozen=True)
class ClipPlan:
    """A clip and the garment it presents; ``item_id`` is ``None`` when that garment is not in the catalogue."""

    video_id: str
    stream: int
    index: int
    design: Design
    instance_id: int
    item_id: str | None
    variant_of: str | None


@dataclass(frozen=True)
class Plan:
    items: tuple[ItemPlan, ...]
    clips: tuple[ClipPlan, ...]
    groups: tuple[tuple[str, ...], ...]


def variant_groups(config: SynthConfig) -> list[list[int]]:
    """Item indices grouped into colour-variant families of 2 or 3; about ``colour_variant_share`` of all items."""
    rng = np.random.default_rng([config.seed, GROUPS])
    count = int(round(config.items * config.colour_variant_share))
    if count == 1 and config.items >= 2 and config.colour_variant_share > 0:
        count = 2
    members = [int(i) for i in rng.permutation(config.items)[:count]]
    groups: list[list[int]] = []
    while len(members) >= 2:
        size = 3 if len(members) == 3 or (len(members) >= 5 and rng.random() < 0.35) else 2
        groups.append(sorted(members[:size]))
        members = members[size:]
    return groups


def _item_designs(config: SynthConfig, groups: list[list[int]]) -> list[Design]:
    """Designs per item, in index order: a group's first item is drawn, later members are its colour
    variants; no two unrelated items look alike."""
    group_of = {k: g for g in groups for k in g}
    designs: list[Design] = []
    for k in range(config.items):
        rng = np.random.default_rng([config.seed, ITEM_DESIGN, k])
        group = group_of.get(k)
        if group is not None and group[0] != k:
            family = [designs[m] for m in group if m < k]
            strangers = [d for m, d in enumerate(designs) if m not in group]
            designs.append(distinct(partial(colour_variant, family[0], family, rng), strangers))
        else:
            designs.append(distinct(partial(random_design, rng), designs))
    return designs


def make_plan(config: SynthConfig) -> Plan:
    """Items, clips (one per item, then the not-in-catalogue ones) and variant groups."""
    groups = variant_groups(config)
    group_of = {k: g for g, members in enumerate(groups) for k in members}
    designs = _item_designs(config, groups)
    ids = config.item_ids
    items = tuple(ItemPlan(ids[k], k, designs[k], contest_instance_id(ids[k], 1), group_of.get(k)) for k in range(config.items))
    clips = [ClipPlan(item.item_id, CLIP, item.index, item.design, item.instance_id, item.item_id, None) for item in items]
    catalogue = [item.design for item in items]
    for j in range(config.uncatalogued_clips):
        rng = np.random.default_rng([config.seed, EXTRA_DESIGN, j])
        variant_of = None
        if rng.random() < config.colour_variant_share:
            source = items[int(rng.integers(config.items))]
            members = groups[source.group] if source.group is not None else [source.index]
            family = [items[k].design for k in members]
            strangers = [item.design for item in items if item.index not in members]
            design = distinct(partial(colour_variant, source.design, family, rng), strangers)
            variant_of = source.item_id
        else:
            design = distinct(partial(random_design, rng), catalogue)
        clips.append(ClipPlan(f"{UNCATALOGUED_BASE + config.first_id + j:06d}", EXTRA_CLIP, j, design, 0, None, variant_of))
    group_ids = tuple(tuple(ids[k] for k in g) for g in groups)
    return Plan(items, tuple(clips), group_ids)
