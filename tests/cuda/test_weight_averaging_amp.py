"""Averaged weights under the bundle's ``amp: true`` on the device (autocast and GradScaler on a GPU): the EMA of the
fp32 weights as a hand computation from the raw weights, validation on the average, last.pt raw, model_final.pt
averaged, and the raw trajectory the one without averaging."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler

from fpt_monai.engines import ClassificationMetric, FPTCheckpointer, WeightAveraging, load_checkpoint
from fpt_monai.engines.weight_averaging import EMA_WARMUP_POWER

from .conftest import is_cuda

pytestmark = pytest.mark.cuda

STEPS = 3


def _run(root, device, mode):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    net = net.to(device)
    gen = torch.Generator().manual_seed(1)
    data = [{"image": torch.randn(8, 8, generator=gen), "label": torch.arange(8) % 2} for _ in range(STEPS)]
    validator = SupervisedEvaluator(
        device=device,
        val_data_loader=data[:1],
        network=net,
        key_val_metric={"val_auc": ClassificationMetric(name="auc", output_transform=lambda o: _pred_label(o))},
        amp=is_cuda(device),
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    averager = WeightAveraging(net, mode=mode, ema_decay=0.99, validator=validator)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=2,
        train_data_loader=data,
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        amp=is_cuda(device),  # as the bundle: AMP where CUDA is
        train_handlers=[  # the bundle's order: the checkpointer attaches the averager
            ValidationHandler(validator=validator, interval=1, epoch_level=True),
            FPTCheckpointer(root, net, optimizer, validator=validator, averager=averager),
        ],
    )
    seen = {"raw": [], "validated": {}}
    snapshot = lambda: {k: v.detach().float().cpu().clone() for k, v in net.state_dict().items()}  # noqa: E731
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen["raw"].append(snapshot()))
    validator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda v: seen["validated"].setdefault(v.state.epoch, snapshot())
    )
    trainer.run()
    return seen


def _pred_label(output):
    from monai.handlers import from_engine

    preds, labels = from_engine(["pred", "label"])(output)
    return [torch.softmax(p.float(), 0) for p in preds], labels


def test_ema_under_amp_averages_the_fp32_weights(tmp_path, device):
    plain = _run(tmp_path / "none", device, "none")
    seen = _run(tmp_path / "ema", device, "ema")
    for a, b in zip(plain["raw"], seen["raw"], strict=True):  # the raw trajectory is the one without averaging
        assert all(torch.equal(a[k], b[k]) for k in a)
    floats = [k for k, v in seen["raw"][0].items() if not k.endswith("num_batches_tracked")]
    ema = {k: seen["raw"][0][k] for k in floats}
    for n in range(1, len(seen["raw"])):
        d = min(0.99, 1 - (1 + n) ** -EMA_WARMUP_POWER)
        ema = {k: d * ema[k] + (1 - d) * seen["raw"][n][k] for k in floats}
    final = load_checkpoint(tmp_path / "ema" / "model_final.pt", map_location="cpu")
    for k in floats:
        torch.testing.assert_close(seen["validated"][2][k], ema[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(final[k].float(), ema[k], rtol=1e-5, atol=1e-6)
        assert final[k].dtype == torch.float32  # the average is kept in the weights' precision, not autocast's
    last = load_checkpoint(tmp_path / "ema" / "last.pt", map_location="cpu")
    assert all(torch.equal(last["network"][k].float(), seen["raw"][-1][k]) for k in floats)
