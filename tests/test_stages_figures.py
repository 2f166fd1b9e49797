"""The stages demo's published comparison with its plain-CNN baseline (no training).

`make stages-compare` trains configs/stages_demo.py and configs/stages_simple_cnn.py and checks
their comparison against docs/demo/stages/compare.md; `make stages-figures` publishes it there
and in docs/stages.md's block. These tests check docs/stages.md against docs/demo/stages/, the
check itself, and that the two configs differ only in the recipe docs/stages.md describes.
"""

import json
import re
from pathlib import Path

import pytest

from alz_jax.configs import stages_demo, stages_simple_cnn
from alz_jax.evaluation import stages_docs
from alz_jax.host.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
COMPARE = (ROOT / stages_docs.DOCS_COMPARE).read_text()
RUNS = json.loads((ROOT / stages_docs.DOCS_RUNS).read_text())
IMAGE_SPLIT = (ROOT / stages_docs.DOCS_IMAGE_SPLIT).read_text()
# The same comparison on a set the recipe was not tuned on (`make stages-compare STAGES_SEED=1`).
COMPARE_SEED1 = (ROOT / stages_docs.DOCS_STAGES / "compare_seed1.md").read_text()
# A decimal number, not part of a version such as 3.11.7 or of a longer number.
DECIMAL = re.compile(r"(?<![\d.])[+-]?\d+\.\d+(?![\d.])(?!\.\d)")


def _stages_section() -> str:
    text = (ROOT / stages_docs.DOC).read_text()
    start = text.index("## The stages demo\n")
    return text[start : text.index("### What the image split does to the numbers", start)]


def test_the_docs_blocks_are_the_ones_make_stages_figures_and_image_split_write():
    text = (ROOT / stages_docs.DOC).read_text()
    block = stages_docs.block_text(COMPARE, RUNS)
    assert f"<!-- stages-figures:start -->\n{block}<!-- stages-figures:end -->\n" in text
    assert (
        f"<!-- stages-image-split:start -->\n{IMAGE_SPLIT}<!-- stages-image-split:end -->\n" in text
    )


def test_the_image_split_table_is_written_from_the_reports(tmp_path):
    def report(matched: int, accuracy: float) -> dict:
        ci = {"accuracy": [accuracy - 0.1, accuracy + 0.01], "quadratic_kappa": [0.5, 0.9],
              "macro_f1": [0.4, 0.8]}  # fmt: skip
        return {
            "cross_split_near_duplicates": {
                "test_images_with_train_match": matched, "test_images": 200,
                "share": matched / 200,
            },
            "slice": {"accuracy": accuracy, "quadratic_kappa": 0.75, "macro_f1": 0.6, "ci95": ci},
        }  # fmt: skip

    text = stages_docs.image_split_text({"split_a": report(199, 0.95), "split_b": report(0, 0.8)})
    rows = text.splitlines()[2:]
    assert rows == [
        "| A: the folders (by image), intervals over images | 199 of 200 (100%) | "
        "0.950 [0.850, 0.960] | 0.750 [0.500, 0.900] | 0.600 [0.400, 0.800] |",
        "| B: near-duplicate groups, re-split 70/15/15 | 0 of 200 (0%) | "
        "0.800 [0.700, 0.810] | 0.750 [0.500, 0.900] | 0.600 [0.400, 0.800] |",
    ]
    published = tmp_path / "image_split.md"
    published.write_text(text)
    assert stages_docs.image_split_failure(text, published) is None
    failure = stages_docs.image_split_failure(text.replace("0.950", "0.951"), published)
    assert failure.startswith("FAILED: these runs' table differs") and "+| A:" in failure


def test_every_figure_in_the_prose_is_a_published_one():
    prose = re.sub(r"<!-- stages-figures:start -->.*?<!-- stages-figures:end -->", "",
                   _stages_section(), flags=re.S)  # fmt: skip
    # The recipe's own settings (label smoothing 0.1) are quoted from the config, not measured.
    config = (ROOT / "configs" / "stages_demo.py").read_text()
    published = set(DECIMAL.findall(COMPARE + COMPARE_SEED1 + config)) | set(
        DECIMAL.findall(json.dumps(RUNS))
    )
    quoted = DECIMAL.findall(prose)
    assert [d for d in quoted if d not in published] == []
    assert len(quoted) >= 2  # the prose quotes the two macro F1s: the check is not vacuous


@pytest.mark.parametrize("published", [COMPARE, COMPARE_SEED1], ids=["tuned_on", "seed1"])
def test_the_demo_beats_the_plain_cnn_on_slice_macro_f1_in_the_published_comparisons(published):
    slice_table = (
        stages_docs.sections(published)["Test metrics"].split("### Slice level")[1].split("###")[0]
    )
    rows = [line.split("|") for line in slice_table.splitlines() if line.startswith("| stages")]
    header = next(line for line in slice_table.splitlines() if line.startswith("| model"))
    column = [c.strip() for c in header.split("|")].index("macro F1")
    by_name = {row[1].strip(): float(row[column].split()[0]) for row in rows}
    assert list(by_name) == ["stages", "stages_corn", "stages_cnn"]
    assert by_name["stages"] >= by_name["stages_cnn"]


def test_the_check_ignores_paths_and_times_and_catches_a_changed_figure(tmp_path):
    published = tmp_path / "compare.md"
    published.write_text(COMPARE)
    moved = COMPARE.replace("`.demo/stages`", "`/elsewhere/stages`")
    moved = re.sub(r"(## Cost\n)", r"\1\nimages/s 123.4\n", moved)
    assert stages_docs.expectation_failure(moved, published) is None
    first = DECIMAL.search(stages_docs.sections(COMPARE)["Test metrics"]).group(0)
    changed = COMPARE.replace(first, "0.001", 1)
    failure = stages_docs.expectation_failure(changed, published)
    assert failure.startswith(f"FAILED: this comparison differs from {published}")
    assert "+" in failure and "0.001" in failure


def test_the_blocks_need_their_markers_and_only_the_named_one_is_rewritten():
    with pytest.raises(UserError, match="stages-NAME:start"):
        stages_docs.rewrite_block("no block here\n", "figures", "x\n", "docs/stages.md")
    text = (
        "a\n<!-- stages-figures:start -->\nold\n<!-- stages-figures:end -->\nb\n"
        "<!-- stages-image-split:start -->\nkept\n<!-- stages-image-split:end -->\n"
    )
    new = stages_docs.rewrite_block(text, "figures", "new\n", "docs/stages.md")
    assert new == text.replace("\nold\n", "\nnew\n")
    with pytest.raises(UserError, match="found \\['figures'\\]"):
        stages_docs.rewrite_block(text.partition("<!-- stages-image")[0], "figures", "", "d")


def _flat(config, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_demo_and_its_baseline_differ_only_in_the_recipe_the_docs_describe():
    demo, baseline = _flat(stages_demo.get_config()), _flat(stages_simple_cnn.get_config())
    assert set(demo) == set(baseline)
    differ = {k: (demo[k], baseline[k]) for k in demo if demo[k] != baseline[k]}
    assert differ == {
        "optim.label_smoothing": (0.1, 0.0),
        "augment.rotate_prob": (1.0, 0.0),
        "ema.enabled": (True, False),
        "swa.enabled": (True, False),
        "eval_every_epochs": (3, 1),
    }
    assert demo["model.name"] == "simple_cnn" and demo["data.synthetic_difficulty"] == "hard"
