"""Class names shared by the layouts: the dementia stages, the AD/NC spellings, and the one
ordered class list a set of folder or label names maps to.

Class names are mapped to one ordered list when every one is a known dementia stage
(STAGE_ALIASES: NonDemented < VeryMildDemented < MildDemented < ModerateDemented), or to NC, AD
when there are two spelled as those (LABEL_ALIASES); any other set of class names is kept as
found, in sorted order.
A set kept as found is checked for probable typos (`similar_class_names`): a name a letter
from a known spelling or from another class of the set.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

from .base import LayoutError

# ClassLabel order of a two-class set: NC=0, AD=1 (AD is the positive class).
BINARY_CLASS_NAMES = ("NC", "AD")
# Spellings of AD and NC, compared case-insensitively with everything but letters removed
# ("Non-Demented" -> "nondemented"). The synthetic generator writes AD/NC; ADNI's own tables say
# CN (cognitively normal); other releases spell out the group. Anything else (MCI, EMCI,
# "MildDemented", numbers) is counted as unrecognised, never guessed.
LABEL_ALIASES = {
    "NC": ("nc", "cn", "normal", "control", "normalcontrol", "healthy", "healthycontrol",
           "cognitivelynormal", "nondemented"),
    "AD": ("ad", "alzheimer", "alzheimers", "alzheimerdisease", "alzheimersdisease",
           "dementia", "demented"),
}  # fmt: skip
_LABEL_OF_ALIAS = {alias: cls for cls, aliases in LABEL_ALIASES.items() for alias in aliases}

STAGES = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
# Spellings of each stage, compared lower-case with everything but letters and digits removed
# ("Very_Mild_Demented" -> "verymilddemented", "CDR 0.5" -> "cdr05"). Clinical Dementia Rating
# (CDR) 0 / 0.5 / 1 / 2 is how OASIS grades them.
STAGE_ALIASES = {
    "NonDemented": ("nondemented", "nondementia", "nodementia", "notdemented", "cdr0"),
    "VeryMildDemented": ("verymilddemented", "verymilddementia", "verymild", "cdr05"),
    "MildDemented": ("milddemented", "milddementia", "mild", "cdr1"),
    "ModerateDemented": ("moderatedemented", "moderatedementia", "moderate", "cdr2"),
}
_STAGE_OF_ALIAS = {a: stage for stage, aliases in STAGE_ALIASES.items() for a in aliases}
# Every known spelling (normalised) and what it names, for the typo check.
_KNOWN_SPELLINGS = [(a, f"the stage {stage}") for stage, aliases in STAGE_ALIASES.items()
                    for a in aliases] + [(a, f"the label {cls}") for cls, aliases in
                                         LABEL_ALIASES.items() for a in aliases]  # fmt: skip
_KNOWN = {alias for alias, _ in _KNOWN_SPELLINGS}


def canonical_label(value: object) -> str | None:
    """'NC' or 'AD' for a label spelled as in LABEL_ALIASES, else None."""
    if not isinstance(value, str):
        return None
    return _LABEL_OF_ALIAS.get(re.sub(r"[^a-z]", "", value.lower()))


def stage_of(name: str) -> str | None:
    """The canonical stage a class name spells (STAGE_ALIASES), or None."""
    return _STAGE_OF_ALIAS.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def class_order(found: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """(class names in label order, name as found -> class name).

    All known stages: the canonical stages present, in order of severity. Otherwise the names
    as found, sorted. Two spellings of one stage are an error (which folder is which?)."""
    found = sorted(set(found))
    stages = {name: stage_of(name) for name in found}
    if found and all(stages.values()):
        by_stage = collections.defaultdict(list)
        for name, stage in stages.items():
            by_stage[stage].append(name)
        clashes = {s: n for s, n in by_stage.items() if len(n) > 1}
        if clashes:
            raise LayoutError(
                f"Class names {clashes} spell the same stage twice; rename or merge them."
            )
        return tuple(s for s in STAGES if s in by_stage), dict(stages)
    # Two classes spelled as AD and NC (LABEL_ALIASES: "Alzheimer", "Normal", "Demented", ...):
    # NC, AD in that order, AD the positive class as for ADNI.
    binary = {name: canonical_label(name) for name in found}
    if len(found) == 2 and set(binary.values()) == set(BINARY_CLASS_NAMES):
        return BINARY_CLASS_NAMES, binary
    return tuple(found), {name: name for name in found}


def _normalised(name: str) -> str:
    """A name as STAGE_ALIASES spells them: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def edit_distance(a: str, b: str) -> int:
    """Letters inserted, deleted, replaced or swapped with a neighbour to turn `a` into `b`
    (Levenshtein with adjacent transpositions: 'Nomral' is one slip from 'Normal')."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb)))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def _slip(a: str, b: str) -> int | None:
    """The edit distance of two normalised names when it is small enough to be a typo, else
    None: 1 where both have 5 or more characters, 2 where both have 10 or more. Short names
    (AD, CN, MCI, EMCI, pMCI, numbers) are left alone, and so are names that differ only in
    their digits (stage1, stage2) or by a plural s (Control, Controls)."""
    shortest = min(len(a), len(b))
    if shortest < 5 or re.sub(r"\d", "", a) == re.sub(r"\d", "", b) or a + "s" == b or b + "s" == a:
        return None
    distance = edit_distance(a, b)
    return distance if 0 < distance <= (2 if shortest >= 10 else 1) else None


def _spells(name: str, meant: str | None) -> bool:
    """Whether `name` spells the stage or label `meant` (None: nothing was meant)."""
    return meant is not None and meant in (stage_of(name), canonical_label(name))


def _enumerated(a: str, b: str) -> bool:
    """Whether two names differ only in a last letter that numbers them: after a separator or
    in capitals (group_a, group_b; GroupA, GroupB), not a slip within a word (Benign, Benigm)."""
    if len(a) != len(b) or a[:-1].lower() != b[:-1].lower() or len(a) < 2:
        return False
    return not a[-2].isalnum() or (a[-1].isupper() and b[-1].isupper())


def _apart(distance: int) -> str:
    return "one letter" if distance == 1 else f"{distance} letters"


def _near_known(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The names within a slip of a known stage or AD/NC spelling (not one themselves): a line
    for each, and the stage or label each probably means."""
    problems, meant = [], {}
    for name in names:
        spelled = _normalised(name)
        if spelled in _KNOWN:
            continue
        for alias, what in _KNOWN_SPELLINGS:
            distance = _slip(spelled, alias)
            if distance:
                problems.append(f"class {name!r} is {_apart(distance)} from {what} "
                                f"(alias {alias!r})")  # fmt: skip
                meant[name] = stage_of(alias) or canonical_label(alias)
                break
    return problems, meant


def _near_each_other(names: Sequence[str], meant: dict[str, str]) -> list[str]:
    """A line for each pair of names that spell one name, stage or label, or are within a slip
    of each other, unless one is already said to be a slip of what the other spells."""
    problems = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if _spells(b, meant.get(a)) or _spells(a, meant.get(b)):
                continue
            same = stage_of(a) or canonical_label(a)
            if _normalised(a) == _normalised(b) or (same and _spells(b, same)):
                what = f"the {'stage' if stage_of(a) else 'label'} {same}" if same else "one name"
                problems.append(f"classes {a!r} and {b!r} both spell {what}")
                continue
            distance = _slip(_normalised(a), _normalised(b))
            if distance and not _enumerated(a, b):
                problems.append(f"classes {a!r} and {b!r} are {_apart(distance)} apart")
    return problems


def similar_class_names(class_names: Sequence[str]) -> list[str]:
    """A line for each class name (as `class_order` keeps it) that is probably a typo: within a
    slip (`_slip`) of a known stage or AD/NC spelling (STAGE_ALIASES, LABEL_ALIASES), or of
    another class of the set; or the same name, stage or label as another class. Nothing for a
    set `class_order` recognised (all stages, or AD and NC)."""
    names = list(class_names)
    if set(names) <= set(STAGES) or set(names) == set(BINARY_CLASS_NAMES):
        return []
    problems, meant = _near_known(names)
    return problems + _near_each_other(names, meant)
