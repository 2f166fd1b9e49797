"""Class names shared by the layouts: the dementia stages, the AD/NC spellings, and the one
ordered class list a set of folder or label names maps to.

Class names are mapped to one ordered list when every one is a known dementia stage
(STAGE_ALIASES: NonDemented < VeryMildDemented < MildDemented < ModerateDemented), or to NC, AD
when there are two spelled as those (LABEL_ALIASES); any other set of class names is kept as
found, in sorted order.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

from tfds_builders.mri_slices.layouts.base import LayoutError

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
