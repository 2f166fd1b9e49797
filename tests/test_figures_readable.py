"""Figures readable where they are shown: every report figure drawn at the size its PNG is
written and as TensorBoard image cards (figures.CARD_PX) has no two texts overlapping, no text
outside the canvas and no count outside its confusion cell; the augmented grid's captions hold
the whole class name inside their cell; the HParams trial has ints as ints, the model family in
the model column and a name that is neither "workdir" nor "."."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from tensorboard.plugins.hparams import plugin_data_pb2

from alz_jax.evaluation import figures, metrics, saliency
from alz_jax.host import writers
from alz_jax.models import convnext, registry

STAGES = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
FILE_DPI = 110  # figures.save's


def _units(rng) -> dict:
    """Slice, scan and subject units of 60 subjects x 2 scans x 8 slices, probabilities that
    lean towards the truth."""
    n = 60 * 2 * 8
    labels = np.repeat(rng.integers(0, 2, 60), 16)
    records = {
        "file_name": np.array([f"f{i}.png" for i in range(n)], object),
        "scan_id": np.array([f"scan{i // 8}" for i in range(n)], object),
        "subject_id": np.array([f"subj{i // 16}" for i in range(n)], object),
        "label": labels,
    }
    probs = np.clip(0.25 + 0.5 * labels + rng.normal(0, 0.25, n), 0, 1)
    return metrics.level_units(records, probs, subjects_known=True)


def _binary_figures() -> dict:
    units = _units(np.random.default_rng(0))
    thresholds = {"slice": 0.493, "scan": 0.507, "subject": 0.481}
    where = "test split, step 404, raw"
    counts = {"slice": [[1250, 127], [24, 1516]], "scan": [[67, 7], [1, 76]],
              "subject": [[27, 2], [0, 31]]}  # fmt: skip
    bins = {lv: metrics.reliability_bins(u.labels, u.probs) for lv, u in units.items()}
    return {
        "roc": figures.roc_figure(units, thresholds, where),
        "confusion": figures.confusion_figure(counts, thresholds,
                                              f"{where}; thresholds chosen on validation"),
        "reliability": figures.reliability_figure(bins, where),
    }  # fmt: skip


def _multiclass_figures() -> dict:
    rng = np.random.default_rng(1)
    counts = {lv: rng.integers(0, n, (4, 4)).tolist()
              for lv, n in (("slice", 3000), ("scan", 200), ("subject", 60))}  # fmt: skip
    matrices = {lv: {"counts": c, "rows_true_cols_predicted": list(STAGES)}
                for lv, c in counts.items()}  # fmt: skip
    bins = {}
    for level in counts:
        top = rng.uniform(0.25, 1, 500)
        correct = (rng.uniform(size=500) < top).astype(int)
        b = metrics.reliability_bins(correct, top)
        bins[level] = {**b, "mean_confidence": b["mean_predicted"],
                       "accuracy": b["observed_ad_fraction"]}  # fmt: skip
    where = "test split, step 1200, ema"
    return {
        "confusion": figures.multiclass_confusion_figure(matrices, f"{where}; argmax"),
        "reliability": figures.top_label_reliability_figure(bins, where),
    }


def _gradcam_figure(long_names: bool, attention: bool = False):
    """Four scans of five 64 px slices with smooth maps; ADNI-long file names when asked; the
    spatial attention figure (the same layout) when `attention`."""
    rng = np.random.default_rng(2)
    stem = ("ADNI_002_S_0295_MR_MPR__GradWarp__B1_Correction__N3__Scaled_Br_20070319113623975"
            if long_names else "148646")  # fmt: skip
    slices = list(range(84, 104, 4))
    rows = [
        saliency.ScanRow(scan, label, prob,
                         [f"test/{'AD' if label else 'NC'}/{stem}_{s}.png" for s in slices], slices)
        for scan, label, prob in (("148646", 1, 0.96), ("750548", 0, 0.04), ("792970", 1, 0.06),
                                  ("189843", 0, 0.94))
    ]  # fmt: skip
    images = rng.integers(0, 255, (20, 64, 64), np.uint8)
    yy, xx = np.mgrid[:64, :64] / 63
    cams = np.stack([np.exp(-((xx - rng.uniform()) ** 2 + (yy - 0.5) ** 2) * 8) for _ in range(20)])
    draw = saliency.draw_attention if attention else saliency.draw_gradcam
    return draw(rows, images, cams, 0.493)


BINARY, STAGED = ("roc", "confusion", "reliability"), ("confusion", "reliability")
FIGURES = {
    **{f"binary_{k}": (lambda k=k: _binary_figures()[k]) for k in BINARY},
    **{f"stages_{k}": (lambda k=k: _multiclass_figures()[k]) for k in STAGED},
    "gradcam": lambda: _gradcam_figure(long_names=False),
    "gradcam_adni_names": lambda: _gradcam_figure(long_names=True),
    "spatial_attention": lambda: _gradcam_figure(long_names=True, attention=True),
}  # fmt: skip


def _tick_labels(axis) -> list:
    """The tick labels an axis draws (those of its ticks inside the view)."""
    ticks = axis._update_ticks()  # what Axis.draw draws
    return [label for t in ticks for label in (t.label1, t.label2) if label.get_visible()]


def _drawn_texts(fig) -> list:
    """Every text the figure draws: figure titles and labels, axes titles, axis labels, tick
    labels in view, texts on the axes and legend entries."""
    texts = list(fig.texts)
    texts += [getattr(fig, a) for a in ("_suptitle", "_supxlabel", "_supylabel")
              if getattr(fig, a, None) is not None]  # fmt: skip
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.axison:
            texts += [ax.xaxis.label, ax.yaxis.label]
            texts += _tick_labels(ax.xaxis) + _tick_labels(ax.yaxis)
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    unique = {id(t): t for t in texts}  # the suptitle is also among fig.texts
    return [t for t in unique.values() if t.get_visible() and t.get_text().strip()]


def _problems(fig) -> list[str]:
    """What keeps the drawn figure from being read: overlapping texts, texts beyond the
    canvas, counts beyond their confusion cell."""
    renderer = fig.canvas.get_renderer()
    width, height = fig.canvas.get_width_height()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _drawn_texts(fig)]
    found = []
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        overlap_w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        overlap_h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if overlap_w > 1 and overlap_h > 1:
            found.append(f"{a!r} overlaps {b!r}")
    for text, box in boxes:
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            found.append(f"{text!r} leaves the {width}x{height} canvas: {box.bounds}")
    for ax in fig.axes:
        if not ax.images or not ax.texts or ax.images[0].get_cmap().name != "Blues":
            continue  # not a count matrix
        for text in ax.texts:
            j, i = text.get_position()
            cell = ax.transData.transform([(j - 0.5, i + 0.5), (j + 0.5, i - 0.5)])
            box = text.get_window_extent(renderer)
            if box.x0 < cell[0][0] or box.x1 > cell[1][0] or box.y0 < cell[0][1] or \
                    box.y1 > cell[1][1]:  # fmt: skip
                found.append(f"count {text.get_text()!r} spills out of its cell")
    return found


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_is_readable_as_its_file_and_as_tensorboard_cards(name):
    fig = FIGURES[name]()
    cards = figures.card_figures(fig)  # before the file's dpi: cards are drawn at their own
    panels = {"binary_roc": 2, "gradcam": 4, "gradcam_adni_names": 4,
              "spatial_attention": 4}.get(name, 3)  # fmt: skip
    assert len(cards) == panels
    for card in cards:
        assert card.canvas.get_width_height() == figures.CARD_PX
        assert _problems(card) == []
    images = figures.to_tensorboard_image(fig)
    assert images.shape == (panels, figures.CARD_PX[1], figures.CARD_PX[0], 3)
    fig.set_dpi(FILE_DPI)
    FigureCanvasAgg(fig).draw()
    assert _problems(fig) == []


def test_gradcam_has_a_colour_scale_and_says_what_red_means():
    fig = _gradcam_figure(long_names=False)
    for shown in [fig, *figures.card_figures(fig)]:
        FigureCanvasAgg(shown).draw()
        labels = [ax.get_ylabel() for ax in shown.axes]
        assert "Grad-CAM (1: the slice's highest)" in labels
        explanation = shown._supxlabel.get_text()
        assert explanation in (saliency.EXPLANATION, saliency.CARD_EXPLANATION)
        assert explanation.startswith("Red: ") and "raised the" in explanation


def test_confusion_counts_shrink_into_small_cells():
    counts = {"slice": [[123456, 7], [89, 654321]]}
    fig = figures.confusion_figure(counts, {"slice": 0.5}, "test split")
    card = figures.card_figures(fig)[0]
    assert _problems(card) == []
    assert sorted(t.get_text().split("\n")[0] for t in card.axes[0].texts) == [
        "123456", "654321", "7", "89"]  # fmt: skip


@pytest.mark.parametrize("mixed", [False, True])
def test_augmented_grid_captions_hold_whole_class_names(mixed):
    rng = np.random.default_rng(3)
    batch = {"image": rng.integers(0, 255, (8, 64, 64, 1), np.uint8),
             "label": np.array([0, 1, 2, 3, 3, 2, 1, 0])}  # fmt: skip
    if mixed:
        batch["targets"] = np.eye(4)[batch["label"]] * 0.7 + np.eye(4)[batch["label"][::-1]] * 0.3
    grid = figures.image_grid(batch, num=8, columns=4, class_names=STAGES)
    captions = figures.grid_captions(batch, 8, STAGES, 60)
    cell = grid.shape[1] // 4
    for i, lines in enumerate(captions):
        drawn = "".join(lines).replace(" ", "")
        assert STAGES[int(batch["label"][i])] in drawn, lines
        if mixed:
            assert STAGES[int(batch["label"][::-1][i])] in drawn, lines
        assert all(figures.caption_width(line) + 2 <= cell for line in lines), (lines, cell)
    rows = grid.shape[0] // 2
    assert rows >= 64 + 12 * max(len(lines) for lines in captions)


def _session(workdir) -> tuple[str, dict, object]:
    """(run folder relative to <workdir>/tensorboard, hparams, experiment) as written."""
    root = workdir / "tensorboard"
    found = {}
    for events in root.rglob("events.out.tfevents*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag.startswith("_hparams_/"):
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content
                    )
                    found[value.tag] = (events.parent.relative_to(root).as_posix(), data)
    run, start = found["_hparams_/session_start_info"]
    return run, start.session_start_info, found["_hparams_/experiment"][1].experiment


@pytest.mark.parametrize("folder", ["workdir", "."])
def test_hparams_name_the_run_and_keep_ints(tmp_path, monkeypatch, folder):
    project = tmp_path / "demo_project"
    (project / "workdir").mkdir(parents=True)
    monkeypatch.chdir(project)
    workdir = project / folder
    writer = writers.Writer(folder)
    writer.write_hparams({"model": "ConvNeXt atto", "image_size": 64, "learning_rate": 0.002,
                          "mixing": "off"}, [("validation", "loss")])  # fmt: skip
    writer.write_scalars(1, {"validation/loss": 0.5})
    writer.close()
    run, session, experiment = _session(workdir)
    named = {"workdir": "demo_project_workdir", ".": "demo_project"}[folder]
    assert (run, session.group_name) == (named, named)
    assert session.hparams["02_image_size"].WhichOneof("kind") == "string_value"
    assert session.hparams["02_image_size"].string_value == "64"
    assert session.hparams["03_learning_rate"].number_value == pytest.approx(0.002)
    # The metric runs lie under the session's, where the HParams tab looks them up.
    assert [m.name.group for m in experiment.metric_infos] == ["validation"]
    assert (workdir / "tensorboard" / run / "validation").is_dir()


def test_hparams_model_column_names_the_family():
    # One named model of each family: its title (which names the family) is in the column.
    for name in sorted({family: name for name, (family, _) in registry.NAMES.items()}.values()):
        spec = registry.spec_from_name(name)
        assert registry.title(spec) in registry.hparams_label(spec), name


def test_hparams_model_column_of_a_custom_convnext_names_the_family():
    spec = convnext.ConvNeXtSpec(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    assert registry.hparams_label(spec) == "ConvNeXt depths (1, 1, 1, 1), dims (8, 16, 32, 64)"
    named = registry.spec_from_name("convnext_tiny")
    assert registry.hparams_label(named) == "ConvNeXt tiny (96x192x384x768 / 3-3-9-3)"
