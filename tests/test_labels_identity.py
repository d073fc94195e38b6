from __future__ import annotations

import pytest

from dataset.identity import IdentityEncoder, contest_instance_id, item_of_instance
from dataset.labels import CATEGORIES, ENGLISH, canonical_label, category_index


def test_23_categories_with_english_names() -> None:
    assert len(CATEGORIES) == 23 == len(ENGLISH)
    assert category_index("背带裤") == 22


@pytest.mark.parametrize("label,expected", [
    ("长袖Top", "长袖上衣"), ("短袖Top", "短袖上衣"), ("吊带Top", "吊带上衣"), ("长款外套", "长外套"),
    ("中等半身裙（及膝）", "中等半身裙"), ("长半身裙（到脚）", "长半身裙"), ("古装", "古风"), (" 长裤 ", "长裤"),
])
def test_synonyms_map_onto_categories(label: str, expected: str) -> None:
    assert canonical_label(label) == expected
    assert category_index(label) == CATEGORIES.index(expected)


def test_unknown_label_is_kept_not_fatal() -> None:
    assert category_index("围巾") == -1
    assert canonical_label("围巾") == "围巾"


@pytest.mark.parametrize("instance_id,item", [
    (20001301, "000013"), (20001302, "000013"), (20000101, "000001"),  # contest rule
    (1281401, "012814"), (10294601, "102946"), (11703501, "117035"),   # item*100 rule (real sample)
    (0, None),
])
def test_item_of_instance(instance_id: int, item: str | None) -> None:
    assert item_of_instance(instance_id) == item


def test_contest_ids_round_trip() -> None:
    for item in ("000001", "000013", "012345", "099999"):
        for piece in (1, 2, 99):
            iid = contest_instance_id(item, piece)
            assert len(str(iid)) == 8 and str(iid)[0] == "2"
            assert item_of_instance(iid) == item
    with pytest.raises(ValueError):
        contest_instance_id("100000")
    with pytest.raises(ValueError):
        contest_instance_id("000001", 0)


def test_identity_encoder_dense_sorted_and_saved(tmp_path) -> None:
    enc = IdentityEncoder([20000201, 0, 20000101, 20000201, 1281401])
    assert len(enc) == 3
    assert [enc.encode(i) for i in (1281401, 20000101, 20000201)] == [0, 1, 2]
    assert enc.decode(2) == 20000201
    with pytest.raises(KeyError):
        enc.encode(0)
    enc.save(tmp_path / "ids.json")
    again = IdentityEncoder.load(tmp_path / "ids.json")
    assert again.ids == enc.ids
