"""The linear-probe preset chooses its weight decay and learning rate on the validation split, through the bundle."""

from __future__ import annotations

import json
import logging

from ..bundle_utils import make_workflow, run_workflow
from ..conftest import REPO_ROOT
from .conftest import TRAIN_CONFIG

PROBE = [TRAIN_CONFIG, str(REPO_ROOT / "configs" / "methods" / "linear_probe.yaml")]
EVAL_CONFIG = TRAIN_CONFIG.replace("train.yaml", "evaluate.yaml")


def _optimizer_settings(wf) -> tuple[float, float]:
    (group,) = wf.parser.get_parsed_content("optimizer").param_groups
    return group["weight_decay"], group["initial_lr"]  # "lr" follows the schedule


def test_the_probe_trains_with_the_settings_chosen_on_validation(tmp_path, tiny_bundle_data, caplog):
    data_dir, weights = tiny_bundle_data
    root, store_root = tmp_path / "probe", str(tmp_path / "tokens")
    with caplog.at_level(logging.INFO, logger="fpt_monai.engines.probe_selection"):
        wf = run_workflow(PROBE, root, data_dir, weights, store_root=store_root)
    record_file = root / "models" / "probe_selection.json"
    record = json.loads(record_file.read_text())
    chosen = record["chosen"]
    grid = wf.parser.get_parsed_content("probe_weight_decays"), wf.parser.get_parsed_content("probe_learning_rates")
    assert record["searched"] == ["weight_decay", "learning_rate"] and len(record["table"]) == len(grid[0]) * len(
        grid[1]
    )
    assert {(r["weight_decay"], r["learning_rate"]) for r in record["table"]} == {
        (w, r) for w in grid[0] for r in grid[1]
    }
    assert record["settings"]["epochs"] == 2 and record["settings"]["data"]["validation"] == 4
    assert _optimizer_settings(wf) == (chosen["weight_decay"], chosen["learning_rate"])
    assert f"linear probe: chose weight decay {chosen['weight_decay']:g}, lr {chosen['learning_rate']:g}" in caplog.text
    # what configure_mlflow logs as the run's parameters
    hyper_params = wf.parser.get_parsed_content("hyper_params")
    assert (hyper_params["weight_decay"], hyper_params["learning_rate"]) == (
        chosen["weight_decay"],
        chosen["learning_rate"],
    )
    assert hyper_params["probe_search"] == "weight_decay,learning_rate"

    # a resumed (here: finished) training and an evaluation over the same presets find the choice, search nothing
    text = record_file.read_text()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fpt_monai.engines.probe_selection"):
        again = run_workflow(PROBE, root, data_dir, weights, store_root=store_root)
        assert again.parser.get_parsed_content("probe_choice")["reused"]
        assert _optimizer_settings(again) == (chosen["weight_decay"], chosen["learning_rate"])
        evaluation = run_workflow([*PROBE, EVAL_CONFIG], root, data_dir, weights, store_root=store_root)
        assert evaluation.parser.get_parsed_content("hyper_params")["weight_decay"] == chosen["weight_decay"]
        # evaluation reads the recorded choice and never searches, also on another dataset
        from fpt_monai.data import make_demo_dataset

        other = tmp_path / "other_site"
        make_demo_dataset(other, per_class=6, size=96, seed=3)
        elsewhere = run_workflow([*PROBE, EVAL_CONFIG], root, other, weights, store_root=store_root)
        assert elsewhere.parser.get_parsed_content("hyper_params")["learning_rate"] == chosen["learning_rate"]
    assert "linear probe: chose" not in caplog.text and caplog.text.count("as chosen before") == 1
    assert record_file.read_text() == text and (root / "eval" / "metrics.json").is_file()


def test_a_given_weight_decay_skips_its_search(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    store_root = str(tmp_path / "tokens")
    wf = make_workflow(PROBE, tmp_path / "wd", data_dir, weights, store_root=store_root, weight_decay=5, epochs=1)
    wf.initialize()  # the set-up resolves the MLflow parameters, hence the choice
    record = json.loads((tmp_path / "wd" / "models" / "probe_selection.json").read_text())
    assert record["searched"] == ["learning_rate"] and {r["weight_decay"] for r in record["table"]} == {5.0}
    assert _optimizer_settings(wf) == (5.0, record["chosen"]["learning_rate"])
    assert wf.parser.get_parsed_content("hyper_params")["weight_decay"] == 5.0

    # both given (as text, the way a CLI may pass them): no search, the record says so
    wf = make_workflow(
        PROBE, tmp_path / "both", data_dir, weights, store_root=store_root, weight_decay="5", learning_rate="1e-3"
    )
    wf.initialize()
    record = json.loads((tmp_path / "both" / "models" / "probe_selection.json").read_text())
    assert (record["chosen_on"], record["table"]) == ("given", [])
    assert _optimizer_settings(wf) == (5.0, 1e-3)
    assert wf.parser.get_parsed_content("hyper_params")["probe_search"] == "none"
