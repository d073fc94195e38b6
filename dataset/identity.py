"""How instance ids link clips to shop items, and how training identities are encoded.

Contest rule (``contest``): an instance id is ``2`` + the last five digits of the
item id + a two-digit piece number, e.g. 20001301 and 20001302 for the two
pieces of a set sold as item 000013. The item is recovered as
``"0" + str(instance_id)[1:6]``, the rule participants' evaluators used. It
assumes item ids below 100000, which holds for the contest's ids.

Item-times-100 rule (``item100``): ``instance_id = int(item_id) * 100 + piece``,
used by the rebuilt real-data sample in ``../shared/data/taobao_live_sample``.
The item is ``f"{instance_id // 100:06d}"``.

``item_of_instance`` applies the contest rule to 8-digit ids starting with 2
and the item-times-100 rule to everything else. Id 0 (not a product) has no
item. The synthetic generator writes contest-rule ids.

Training identities: the embedder learns one class per distinct non-zero
instance id. ``IdentityEncoder`` maps the sorted union of the ids it is fitted
on to ``0..N-1`` (sorted, so the encoding does not depend on file order) and
is saved with a checkpoint so that labels mean the same at resume time.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def item_of_instance(instance_id: int) -> str | None:
    """The item id an instance id belongs to, or ``None`` for id 0 (not a product)."""
    if instance_id <= 0:
        return None
    text = str(instance_id)
    if len(text) == 8 and text[0] == "2":
        return "0" + text[1:6]
    return f"{instance_id // 100:06d}"


def contest_instance_id(item_id: str, piece: int = 1) -> int:
    """The contest-rule instance id of piece ``piece`` (1..99) of an item (id < 100000)."""
    number = int(item_id)
    if not 0 <= number < 100_000:
        raise ValueError(f"item id {item_id!r}: the contest rule needs an id below 100000")
    if not 1 <= piece <= 99:
        raise ValueError(f"piece {piece}: must be 1..99")
    return int(f"2{number:05d}{piece:02d}")


class IdentityEncoder:
    """Dense ``0..N-1`` labels for non-zero instance ids."""

    def __init__(self, instance_ids: Iterable[int]) -> None:
        self.ids: list[int] = sorted({int(i) for i in instance_ids if int(i) != 0})
        self._index = {iid: k for k, iid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, instance_id: int) -> int:
        """The dense label of an instance id; ``KeyError`` for an id it was not fitted on."""
        return self._index[int(instance_id)]

    def decode(self, label: int) -> int:
        return self.ids[label]

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"instance_ids": self.ids}))

    @classmethod
    def load(cls, path: Path) -> "IdentityEncoder":
        return cls(json.loads(Path(path).read_text())["instance_ids"])
