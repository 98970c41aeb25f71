"""The linear probe's weight decay and learning rate chosen on the validation split, on synthetic stored features."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from fpt_monai.data import FeatureStore, MissingItemsError
from fpt_monai.engines.probe_selection import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_WEIGHT_DECAYS,
    PROBE_SELECTION_FORMAT,
    choose_probe_settings,
)
from fpt_monai.networks import PooledLinearProbe


def _store(path, x: torch.Tensor, pooled: bool = True) -> FeatureStore:
    store = FeatureStore.create(path, {"synthetic": str(path)}, (1, 1, 1, 1), "float32")
    if pooled:
        store.add_field("pooled", (x.shape[1],))
        store.write_field_shard("pooled", [f"item{i:04d}" for i in range(len(x))], x)
    return store


def _datalist(y: torch.Tensor, n_train: int) -> dict:
    items = [{"id": f"item{i:04d}", "label": int(label)} for i, label in enumerate(y)]
    return {"training": items[:n_train], "validation": items[n_train:]}


def _probe(width: int, num_classes: int = 2) -> PooledLinearProbe:
    """The bundle's probe network on features of ``width`` (a one-block ViT of width / 2 is only its skeleton)."""
    torch.manual_seed(0)
    kwargs = {"embed_dim": width // 2, "num_heads": 1, "depth": 1}
    return PooledLinearProbe(num_classes, "vit_tiny_patch16_224", False, 64, frozen_model=False, backbone_kwargs=kwargs)


def _nuisance(n_train=160, n_val=80, width=16, seed=0):
    """Separable only by cancelling a large shared nuisance (feature 0 minus the others): heavy L2 keeps the weights
    near the per-feature correlations with the label, which see only the nuisance, and under-fits."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    y = torch.arange(n) % 2
    x = 3 * torch.randn(n, 1, generator=g) + 0.05 * torch.randn(n, width, generator=g)
    x[:, 0] += 0.5 * (2 * y - 1)
    return x, y, n_train


def _few_items(n_train=24, n_val=100, width=32, seed=1):
    """A weak signal in every feature, fewer training items than features: a free fit follows the noise (100 full
    batch steps fit every training item), strong decay keeps the weights near the mean difference of the classes."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    y = torch.arange(n) % 2
    return torch.randn(n, width, generator=g) + 0.2 * (2 * y - 1)[:, None].float(), y, n_train


def _row(result, weight_decay, learning_rate=1e-2):
    (row,) = [r for r in result["table"] if (r["weight_decay"], r["learning_rate"]) == (weight_decay, learning_rate)]
    return row


def test_heavy_weight_decay_underfits_and_is_not_chosen(tmp_path):
    x, y, n_train = _nuisance()
    result = choose_probe_settings(
        _probe(x.shape[1]), _store(tmp_path / "s", x), _datalist(y, n_train), learning_rates=(1e-2,), epochs=20
    )
    assert result["searched"] == ["weight_decay", "learning_rate"] and result["chosen_on"] == "validation"
    assert result["weight_decay"] <= 0.1 < max(DEFAULT_WEIGHT_DECAYS)
    heavy = _row(result, max(DEFAULT_WEIGHT_DECAYS))
    assert heavy["train_acc"] < 0.75 and _row(result, result["weight_decay"])["train_acc"] > 0.9
    assert result["val_auc"] > heavy["val_auc"] + 0.2


def test_few_items_and_noisy_features_choose_a_larger_weight_decay(tmp_path):
    x, y, n_train = _few_items()
    result = choose_probe_settings(
        _probe(x.shape[1]), _store(tmp_path / "s", x), _datalist(y, n_train), learning_rates=(1e-2,), epochs=100
    )
    assert result["weight_decay"] >= 5.0
    light = _row(result, min(DEFAULT_WEIGHT_DECAYS))
    assert light["train_acc"] == 1.0  # it fits the training items, and generalises worse
    assert result["val_auc"] > light["val_auc"] + 0.03


def test_the_choice_is_deterministic_and_leaves_the_network_and_random_state_alone(tmp_path):
    x, y, n_train = _nuisance(n_train=48, n_val=24)
    net, store, datalist = _probe(x.shape[1]), _store(tmp_path / "s", x), _datalist(y, n_train)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    first = choose_probe_settings(net, store, datalist, epochs=3, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    second = choose_probe_settings(net, store, datalist, epochs=3, seed=3)
    assert second == first
    assert len(first["table"]) == len(DEFAULT_WEIGHT_DECAYS) * len(DEFAULT_LEARNING_RATES)
    other_seed = choose_probe_settings(net, store, datalist, epochs=3, seed=4)  # the seed orders the batches
    assert other_seed["table"] != first["table"]


def test_the_table_is_written_and_reused_when_nothing_changed(tmp_path, caplog):
    x, y, n_train = _nuisance(n_train=48, n_val=24)
    net, store, datalist = _probe(x.shape[1]), _store(tmp_path / "s", x), _datalist(y, n_train)
    out = tmp_path / "models" / "probe_selection.json"
    grid = {"weight_decays": (0.1, 5.0), "learning_rates": (1e-3, 1e-2)}
    with caplog.at_level("INFO", logger="fpt_monai.engines.probe_selection"):
        result = choose_probe_settings(net, store, datalist, epochs=4, output_file=out, **grid)
    assert "linear probe: chose weight decay" in caplog.text and caplog.text.count("validation AUC") == 4
    record = json.loads(out.read_text())
    assert record["format"] == PROBE_SELECTION_FORMAT and record["searched"] == ["weight_decay", "learning_rate"]
    assert record["chosen"] == {"weight_decay": result["weight_decay"], "learning_rate": result["learning_rate"]}
    assert record["table"] == result["table"] and len(record["table"]) == 4
    assert record["settings"]["weight_decays"] == [0.1, 5.0] and record["settings"]["data"]["validation"] == 24
    best = max(record["table"], key=lambda r: (r["val_auc"], -r["val_loss"]))
    assert (best["weight_decay"], best["learning_rate"]) == (result["weight_decay"], result["learning_rate"])

    text = out.read_text()
    again = choose_probe_settings(net, store, datalist, epochs=4, output_file=out, **grid)  # a resumed training
    assert again["reused"] and again["table"] == result["table"] and out.read_text() == text
    assert (again["weight_decay"], again["learning_rate"]) == (result["weight_decay"], result["learning_rate"])
    for changed in ({"epochs": 5, **grid}, {"epochs": 4, **grid, "weight_decays": (0.1, 1.0)}):
        assert not choose_probe_settings(net, store, datalist, output_file=out, **changed)["reused"]
    relabelled = {**datalist, "validation": [{**i, "label": 1 - i["label"]} for i in datalist["validation"]]}
    assert not choose_probe_settings(net, store, relabelled, epochs=4, output_file=out, **grid)["reused"]
    assert json.loads(out.read_text())["settings"]["weight_decays"] == [0.1, 5.0]  # the latest search's record


def test_equal_validation_auc_goes_to_the_lower_validation_loss(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 2
    x = torch.randn(60, 16, generator=g) + 3.0 * (2 * y - 1)[:, None].float()  # every setting separates them
    result = choose_probe_settings(_probe(16), _store(tmp_path / "s", x), _datalist(y, 40), epochs=5)
    assert all(r["val_auc"] == 1.0 for r in result["table"])
    assert _row(result, result["weight_decay"], result["learning_rate"])["val_loss"] == min(
        r["val_loss"] for r in result["table"]
    )


def test_given_numbers_skip_their_search(tmp_path):
    x, y, n_train = _nuisance(n_train=48, n_val=24)
    net, store, datalist = _probe(x.shape[1]), _store(tmp_path / "s", x), _datalist(y, n_train)
    for given in (5, "5"):  # from the CLI, a number may arrive as text
        result = choose_probe_settings(net, store, datalist, weight_decay=given, epochs=2)
        assert result["searched"] == ["learning_rate"] and result["weight_decay"] == 5.0
        assert [r["weight_decay"] for r in result["table"]] == [5.0] * len(DEFAULT_LEARNING_RATES)
    out = tmp_path / "probe_selection.json"
    # both given: nothing is trained, not even the store is needed (mode online)
    result = choose_probe_settings(net, None, {}, weight_decay=0.5, learning_rate="1e-3", output_file=out)
    assert (result["weight_decay"], result["learning_rate"], result["table"]) == (0.5, 1e-3, [])
    record = json.loads(out.read_text())
    assert record["chosen_on"] == "given" and record["searched"] == [] and record["chosen"]["learning_rate"] == 1e-3


class _Wrapped(nn.Module):
    """The probe behind another module: trained as copies of the network, one setting at a time."""

    def __init__(self, probe: nn.Module) -> None:
        super().__init__()
        self.probe = probe
        self.num_classes = probe.num_classes

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        return self.probe(x, pooled=pooled)


def test_all_settings_at_once_train_as_copies_of_the_network_would(tmp_path):
    """The stacked training of every setting equals training a copy of the network per setting with PyTorch's
    AdamW, the schedule with warm-up, clipping and a class-weighted loss; three classes."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(45) % 3
    x = torch.randn(45, 16, generator=g) + torch.nn.functional.one_hot(y, 16).float()
    store, datalist = _store(tmp_path / "s", x), _datalist(y, 30)
    kwargs = dict(
        weight_decays=(0.01, 20.0),
        learning_rates=(1e-3, 3e-2),
        epochs=4,
        batch_size=8,
        warmup_epochs=1,
        grad_clip=0.05,  # small enough to clip
        loss_function=nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5])),
    )
    stacked = choose_probe_settings(_probe(16, 3), store, datalist, **kwargs)
    copies = choose_probe_settings(_Wrapped(_probe(16, 3)), store, datalist, **kwargs)
    assert len(stacked["table"]) == len(copies["table"]) == 4
    for a, b in zip(stacked["table"], copies["table"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert {r["val_loss"] for r in stacked["table"]} != {stacked["table"][0]["val_loss"]}  # the settings differ


def test_errors_name_the_setting_and_the_fix(tmp_path):
    x, y, n_train = _nuisance(n_train=8, n_val=4)
    net, store, datalist = _probe(x.shape[1]), _store(tmp_path / "s", x), _datalist(y, n_train)
    with pytest.raises(ValueError, match="weight_decays is empty"):
        choose_probe_settings(net, store, datalist, weight_decays=[])
    with pytest.raises(ValueError, match="learning_rate must be a number or 'auto'"):
        choose_probe_settings(net, store, datalist, learning_rate="fast")
    with pytest.raises(ValueError, match=r"learning rate x weight decay must stay below 1.*\(0.01, 100.0\)"):
        choose_probe_settings(net, store, datalist, weight_decays=[1.0, 100.0])
    with pytest.raises(ValueError, match="no validation items.*--weight_decay"):
        choose_probe_settings(net, store, {**datalist, "validation": []})
    with pytest.raises(ValueError, match="needs the feature store.*mode preload"):
        choose_probe_settings(net, None, datalist)
    bare = _store(tmp_path / "bare", x, pooled=False)
    with pytest.raises(MissingItemsError, match=rf"{bare.path}.*holds no pooled features.*preload"):
        choose_probe_settings(net, bare, datalist)
    extra = {**datalist, "training": datalist["training"] + [{"id": "elsewhere.png", "label": 0}]}
    with pytest.raises(MissingItemsError, match=rf"{store.path} lacks the pooled of 1 item.*'elsewhere.png'"):
        choose_probe_settings(net, store, extra)
    with pytest.raises(ValueError, match="needs an 'id'"):
        choose_probe_settings(net, store, {**datalist, "training": [{"label": 0}]})
