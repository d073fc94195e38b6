"""The contest's 23 garment categories and the label spellings real files use.

The official data writes 23 categories as 24 strings (古风 and 古装 are one
class); the early demo data and the reference annotations also use synonyms
such as 长袖Top or 中等半身裙（及膝）. Every spelling maps onto one category index
so that nothing downstream has to know about them.
"""
from __future__ import annotations

CATEGORIES: tuple[str, ...] = (
    "短袖上衣", "长袖上衣", "短袖衬衫", "长袖衬衫", "背心上衣", "吊带上衣", "无袖上衣", "短外套",
    "短马甲", "长袖连衣裙", "短袖连衣裙", "无袖连衣裙", "长马甲", "长外套", "连体衣", "古风",
    "短裙", "中等半身裙", "长半身裙", "短裤", "中裤", "长裤", "背带裤",
)

ENGLISH: tuple[str, ...] = (
    "short-sleeve top", "long-sleeve top", "short-sleeve shirt", "long-sleeve shirt", "vest top",
    "camisole", "sleeveless top", "short coat", "short waistcoat", "long-sleeve dress",
    "short-sleeve dress", "sleeveless dress", "long waistcoat", "long coat", "jumpsuit",
    "traditional costume", "short skirt", "knee-length skirt", "long skirt", "shorts",
    "cropped trousers", "trousers", "overalls",
)

SYNONYMS: dict[str, str] = {
    "古装": "古风",
    "短袖Top": "短袖上衣",
    "长袖Top": "长袖上衣",
    "吊带Top": "吊带上衣",
    "背心Top": "背心上衣",
    "无袖Top": "无袖上衣",
    "长款外套": "长外套",
    "短款外套": "短外套",
    "中等半身裙（及膝）": "中等半身裙",
    "中等半身裙(及膝)": "中等半身裙",
    "长半身裙（到脚）": "长半身裙",
    "长半身裙(到脚)": "长半身裙",
}

_INDEX = {name: i for i, name in enumerate(CATEGORIES)}


def category_index(label: str) -> int:
    """Category index 0..22 of a label in any known spelling, or -1 when unknown.

    Unknown labels are not an error: the detector uses one class and the
    embedder ignores categories, so a new spelling must not lose the box.
    """
    name = label.strip()
    name = SYNONYMS.get(name, name)
    if name in _INDEX:
        return _INDEX[name]
    lowered = name.replace("Top", "上衣")
    return _INDEX.get(lowered, -1)


def canonical_label(label: str) -> str:
    """The official spelling of a label, or the stripped input when unknown."""
    index = category_index(label)
    return CATEGORIES[index] if index >= 0 else label.strip()
