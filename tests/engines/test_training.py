from __future__ import annotations

import math

import pytest
import torch
from monai.engines import SupervisedTrainer

from fpt_monai.engines import FPTPrepareBatch, GradientClipHandler, class_weights, warmup_cosine_schedule


def test_class_weights_are_balanced():
    w = class_weights([0, 0, 0, 1], 2)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 4 / 2]))
    loss = torch.nn.CrossEntropyLoss(weight=w)
    assert loss.weight is w  # the weights really reach the loss (reference bug spec §6.12)
    with pytest.raises(ValueError, match=r"classes \[2\] have no training sample"):
        class_weights([0, 1], 3)
    with pytest.raises(ValueError, match="num_classes"):
        class_weights([0, 5], 2)


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine_schedule(opt, epochs=4, steps_per_epoch=10, warmup_epochs=1)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 1.5 / 3)))
    assert lrs[-1] < 0.01
    no_warmup = warmup_cosine_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0), 2, 5)
    assert no_warmup.get_last_lr()[0] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        warmup_cosine_schedule(opt, epochs=2, steps_per_epoch=5, warmup_epochs=2)


def test_prepare_batch_modes():
    prep = FPTPrepareBatch()
    batch = {"image": torch.zeros(2, 3, 8, 8), "image_side": torch.ones(2, 3, 4, 4), "label": torch.tensor([[1], [0]])}
    inputs, targets, args, kwargs = prep(batch)
    assert inputs.shape == (2, 3, 8, 8) and targets.tolist() == [1, 0] and targets.dtype == torch.long
    assert set(kwargs) == {"image_side"} and args == ()
    preload = {
        "image_side": torch.ones(2, 3, 4, 4),
        "keys": torch.zeros(2, 1, 1, 2, 4).half(),
        "values": torch.zeros(2, 1, 1, 2, 4).half(),
        "label": torch.tensor([1, 1]),
    }
    inputs, targets, _, kwargs = prep(preload)
    assert inputs.shape == (2, 3, 4, 4) and set(kwargs) == {"image_side", "keys", "values"}
    with pytest.raises(KeyError, match="side view"):
        prep({"keys": torch.zeros(1), "values": torch.zeros(1), "label": torch.tensor([0])})
    inputs, targets, _, _ = prep({"image": torch.zeros(1, 3, 8, 8)})
    assert targets is None


def test_gradient_clipping_in_a_real_trainer():
    net = torch.nn.Linear(4, 2)
    with torch.no_grad():
        net.weight.fill_(100.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: we only look at the clipped gradients
    data = [{"image": torch.randn(4, 4) * 100, "label": torch.tensor([0, 1, 0, 1])}]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=torch.nn.CrossEntropyLoss(),
    )
    GradientClipHandler(max_norm=1.0).attach(trainer)
    trainer.run()
    total = torch.sqrt(sum((p.grad**2).sum() for p in net.parameters()))
    assert trainer.state.grad_norm > 1.0 and total == pytest.approx(1.0, rel=1e-4)
