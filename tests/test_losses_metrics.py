import math

import numpy as np
import pytest
import torch

from emolens.evaluation.metrics import classification_metrics
from emolens.training.losses import class_weights, distillation_loss, weighted_cross_entropy
from emolens.training.sampler import EpochSampler


def test_class_weights_inverse_frequency():
    w = class_weights([10, 30, 60, 0])
    # w_c = N / (C * n_c) with N = 100, C = 4; an empty class gets 0
    assert w.tolist() == pytest.approx([100 / 40, 100 / 120, 100 / 240, 0.0])
    assert class_weights([5, 5, 5]).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_weighted_cross_entropy_hand_computed():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    w = torch.tensor([1.0, 2.0, 3.0])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce1 = -math.log(math.e / (math.e + 2))
    expected = (1 * ce0 + 2 * ce1) / (1 + 2)
    assert weighted_cross_entropy(logits, labels, w).item() == pytest.approx(expected, rel=1e-6)
    # soft targets: mean_i sum_c w_c q_ic (-log p_ic)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    logp = torch.log_softmax(logits, 1)
    exp_soft = -((soft * w * logp).sum(1)).mean().item()
    assert weighted_cross_entropy(logits, labels, w, soft=soft).item() == pytest.approx(exp_soft, rel=1e-6)


def test_metrics_hand_computed():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["confusion_ratio"] == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_sampler_is_a_function_of_epoch_and_balances_classes():
    labels = np.array([0] * 90 + [1] * 10)
    s = EpochSampler(labels, balanced=True, seed=3)
    s.set_epoch(2)
    a = list(s)
    s.set_epoch(5)
    s.set_epoch(2)
    assert list(s) == a
    share = np.mean(labels[a])
    assert 0.35 < share < 0.65  # ~half the draws are the 10% class
    shards = [list(EpochSampler(labels, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 50 and not set(shards[0]) & set(shards[1])


def test_logit_adjusted_loss_is_ce_of_shifted_logits_and_balances_a_skewed_prior():
    from emolens.training.losses import log_prior, logit_adjusted_cross_entropy

    lp = log_prior([90, 10, 0])
    assert lp.tolist() == pytest.approx([math.log(0.9), math.log(0.1), math.log(0.5 / 100)], rel=1e-6)
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([1, 0])
    expected = torch.nn.functional.cross_entropy(logits + 0.5 * lp, labels).item()
    assert logit_adjusted_cross_entropy(logits, labels, lp, tau=0.5).item() == pytest.approx(expected)
    # the minimiser of the LA loss on data with prior (0.9, 0.1) and no signal is the uniform posterior:
    # free logits fitted to 90 % class-0 labels end up (nearly) equal, so neither class is preferred
    z = torch.zeros(1, 2, requires_grad=True)
    y = torch.tensor([0] * 90 + [1] * 10)
    opt = torch.optim.SGD([z], lr=1.0)
    for _ in range(300):
        opt.zero_grad()
        logit_adjusted_cross_entropy(z.expand(100, 2), y, log_prior([90, 10])).backward()
        opt.step()
    assert abs(float(z.detach()[0, 0] - z.detach()[0, 1])) < 0.05


def test_mixup_and_cutmix_mix_images_and_soft_targets_alike():
    from emolens.training.losses import mix_batch

    torch.manual_seed(0)
    x = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(6)])  # image i is all i
    votes = torch.softmax(torch.randn(6, 4), 1)  # soft (vote) targets
    assert mix_batch(x, votes)[0] is x  # both off: the batch as it is
    mx, mt, lam = mix_batch(x, votes, mixup=0.4)
    # every mixed image is lam * itself + (1 - lam) * one other; its target mixes the same way
    partner = ((mx[:, 0, 0, 0] - lam * torch.arange(6.0)) / (1 - lam)).round().long()
    assert torch.allclose(mx, lam * x + (1 - lam) * x[partner], atol=1e-5)
    assert torch.allclose(mt, lam * votes + (1 - lam) * votes[partner], atol=1e-5)
    assert torch.allclose(mt.sum(1), torch.ones(6))
    cx, ct, lam = mix_batch(x, votes, cutmix=1.0)
    for i in range(6):  # a box of image i comes from one other image; lam is the share of pixels kept
        kept = (cx[i] == i).float().mean().item()
        others = cx[i][cx[i] != i].unique()
        assert len(others) <= 1 and (kept == pytest.approx(lam) or len(others) == 0)
        if len(others):
            j = int(others[0])
            assert torch.allclose(ct[i], lam * votes[i] + (1 - lam) * votes[j], atol=1e-5)


def test_distillation_loss_is_the_tempered_kl():
    s = torch.zeros(1, 2)
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher: 0.75 / 0.25; student: 0.5 / 0.5
    assert distillation_loss(s, t, 1.0).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    p = torch.softmax(t / 2, 1)[0]
    kl2 = float((p * (p / 0.5).log()).sum())
    assert distillation_loss(s, t, 2.0).item() == pytest.approx(4 * kl2, abs=1e-6)  # T^2 scaling
    assert distillation_loss(t, t.log_softmax(1), 3.0).item() == pytest.approx(0.0, abs=1e-6)  # logits or log-probs


def test_weighted_distillation_is_the_weighted_mean_of_each_faces_kl():
    """Face 0 matches its teacher (KL 0), face 1 does not: weights move the loss between the two."""
    s = torch.zeros(2, 2)
    t = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    kl1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert distillation_loss(s, t, 1.0).item() == pytest.approx(kl1 / 2, abs=1e-6)
    assert distillation_loss(s, t, 1.0, torch.tensor([1.0, 1.0])).item() == pytest.approx(kl1 / 2, abs=1e-6)
    assert distillation_loss(s, t, 1.0, torch.tensor([3.0, 1.0])).item() == pytest.approx(kl1 / 4, abs=1e-6)
    assert distillation_loss(s, t, 1.0, torch.tensor([0.0, 5.0])).item() == pytest.approx(kl1, abs=1e-6)


def test_best_acc_bal_is_rebalance_choice_and_its_bootstrap_is_paired():
    from emolens.evaluation.prior import best_acc_bal, objective, prior_shift_table

    rng = np.random.default_rng(0)
    n, classes = 600, ["a", "b", "c"]
    labels = rng.choice(3, n, p=[0.7, 0.2, 0.1])
    log_prior = np.log([0.7, 0.2, 0.1])
    noisy = np.log(np.eye(3)[labels] * 2 + rng.random((n, 3)) * 2.5)  # right often, not always
    taus = (0.0, 0.3, 0.6, 1.0)
    table = prior_shift_table(noisy, labels, log_prior, classes, taus)
    full = best_acc_bal(noisy, labels, log_prior, taus, n_boot=200, seed=1)
    # the full set gives what rebalance --metric acc_bal would choose (the table rounds to 4 decimals)
    assert full.shape == (201,)
    assert abs(full[0] - max(objective(r, "acc_bal") for r in table)) < 1e-4
    boot = full[1:]
    assert 0.002 < boot.std() < 0.05 and abs(boot.mean() - full[0]) < 0.02  # resamples vary around it
    # same seed, same resamples: a model against itself differs by exactly 0 in every resample
    assert np.array_equal(best_acc_bal(noisy, labels, log_prior, taus, n_boot=200, seed=1), full)
    # a perfect model scores 1 on every resample; the noisy one never does
    perfect = np.log(np.eye(3)[labels] + 1e-3)
    assert np.allclose(best_acc_bal(perfect, labels, log_prior, taus, n_boot=50, seed=1), 1.0)
    assert (boot < 1).all()


def test_choose_row_maximises_the_metric_within_the_floors():
    from emolens.evaluation.prior import choose_row

    def row(tau, acc, bal, rec):
        return {"tau": tau, "accuracy": acc, "balanced_accuracy": bal, "macro_f1": 0.0, "min_recall": rec}

    table = [
        row(0.0, 0.80, 0.80, 0.60),
        row(0.5, 0.85, 0.77, 0.55),
        row(0.7, 0.86, 0.75, 0.40),
        row(1.0, 0.87, 0.70, 0.20),
    ]
    assert choose_row(table, "accuracy")["tau"] == 1.0
    assert choose_row(table, "accuracy", min_bal=0.75)["tau"] == 0.7
    assert choose_row(table, "accuracy", min_bal=0.75, min_recall=0.45)["tau"] == 0.5
    assert choose_row(table, "balanced_accuracy", min_recall=0.45)["tau"] == 0.0
    with pytest.raises(ValueError, match=r"balanced accuracy >= 0.9 .* best on this split are 0.8000 and 0.6000"):
        choose_row(table, "accuracy", min_bal=0.9)
    tie = [row(-0.2, 0.8, 0.8, 0.5), row(0.1, 0.8, 0.8, 0.5)]
    assert choose_row(tie, "accuracy")["tau"] == 0.1  # the smaller shift


def test_in_dataset_classes_reorders_masks_and_scores_absent_classes_as_never_answered():
    from emolens.evaluation.evaluate import in_dataset_classes

    model = ["a", "b", "c"]
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    # an 8-class model on a 7-class set: the set's columns only, in the set's order
    np.testing.assert_array_equal(in_dataset_classes(probs, [0, 1], model, ["c", "a"]), [[0.7, 0.1], [0.1, 0.6]])
    # a model without "d" on a set that declares "d" but holds none: "d" is a column of zeros
    got = in_dataset_classes(probs, [0, 2, 1], model, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(got, [[0.1, 0.2, 0.7, 0.0], [0.6, 0.3, 0.1, 0.0]])
    # ... but a set whose labels hold "d" cannot be scored by that model
    with pytest.raises(ValueError, match=r"model has no class\(es\) \['d'\]"):
        in_dataset_classes(probs, [0, 3], model, ["a", "b", "c", "d"])
    assert in_dataset_classes(probs, [0], model, model) is probs
