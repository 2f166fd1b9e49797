"""The refusals of scan models and 2.5D input that need no training: each names the setting
and what it found."""

from types import SimpleNamespace

import numpy as np
import pytest

from alz_jax.host.errors import UserError
from alz_jax.models import registry, scan
from alz_jax.run import compare_runs, specs
from tests import tiny_config


def config_with(**overrides):
    config = tiny_config.get_config()
    tiny_config.override(config, overrides)
    return config


def test_an_unknown_aggregator_is_refused_by_the_config():
    with pytest.raises(
        UserError, match=r"config\.model\.aggregator = 'max': expected none\|attention"
    ):
        specs.resolve(config_with(**{"model.aggregator": "max"}))


def test_a_transformer_refuses_scans_longer_than_its_position_embedding():
    spec = specs.resolve(config_with(**{
        "model.aggregator": "transformer", "model.max_positions": 16})).model  # fmt: skip
    scan.check_positions(spec, 16)
    with pytest.raises(UserError, match=r"A scan of 17 slices .*config\.model\.max_positions = 16"):
        scan.check_positions(spec, 17)
    attention = specs.resolve(config_with(**{"model.aggregator": "attention"})).model
    scan.check_positions(attention, 10_000)  # attention places no slice by its position


def test_2_5d_sets_the_model_channels_and_refuses_another_count():
    spec = specs.resolve(config_with(**{"data.neighbours": 2}))
    assert spec.model.in_chans == 5 and spec.pipeline.channels == 5
    with pytest.raises(UserError, match=r"config\.model\.in_chans = 3: .*data\.neighbours = 2"):
        specs.resolve(config_with(**{"data.neighbours": 2, "model.in_chans": 3}))


def test_init_from_a_folder_without_a_run_is_refused_before_any_data_work(tmp_path):
    with pytest.raises(UserError, match=r"holds no training run \(no run/record\.json\)"):
        specs.check_init_from_file(f"run:{tmp_path}")


class _Data:
    """Just what the plan reads of a prepared data set: the train split's records."""

    def __init__(self, scans: int, slices: int):
        ids = np.repeat([f"s{i}" for i in range(scans)], slices)
        self._records = {
            "scan_id": ids, "subject_id": ids, "file_name": np.arange(len(ids)).astype(str),
            "slice_index": np.tile(np.arange(slices), scans), "label": np.repeat(
                np.arange(scans) % 2, slices),
        }  # fmt: skip
        self.class_names = ("NC", "AD")

    def records(self, split):
        del split
        return self._records


def test_a_bag_run_counts_its_epoch_and_classes_in_scans():
    run = specs.resolve(config_with(**{"model.aggregator": "mean", "batch_size": 8,
                                       "optim.class_weights": "balanced"}))  # fmt: skip
    plan = run.plan_for(_Data(scans=20, slices=5))
    assert plan.steps_per_epoch == 20 // 8
    assert plan.class_weights == (1.0, 1.0)
    with pytest.raises(UserError, match=r"batch_size 8 exceeds the 6 training scans"):
        run.plan_for(_Data(scans=6, slices=5))
    assert registry.family(run.model).name == "scan"


def test_compare_refuses_a_weighted_vote_its_report_does_not_have():
    saved = SimpleNamespace(workdir="runs/old", spec=SimpleNamespace(
        pipeline=SimpleNamespace(bags=False)))  # fmt: skip
    old = compare_runs.Run("old", saved, {"split": "test"}, predictions=None)
    with pytest.raises(UserError, match=r"--weighted_vote: old's report_test\.json has no weighted"
                       r" vote .*evaluate --workdir=runs/old"):  # fmt: skip
        compare_runs.with_votes([old])
