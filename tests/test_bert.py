"""The BERT-style encoder: BERT's masking statistics, attention over the whole sequence, repeatable evaluation
masks, and masked-token pre-training that learns."""

from __future__ import annotations

import pytest
import torch

from lightning_models import BERT
from lightning_models.bert import IGNORE, mask_tokens


def test_masking_follows_bert_15_percent_and_80_10_10() -> None:
    vocab, mask_id = 1000, 1000
    ids = torch.randint(0, vocab, (256, 512), generator=torch.Generator().manual_seed(0))
    inputs, labels = mask_tokens(ids, mask_id, vocab, 0.15, torch.Generator().manual_seed(1))
    chosen = labels != IGNORE
    n = int(chosen.sum())
    assert abs(n / ids.numel() - 0.15) < 0.003  # 131,072 positions: the share is within 0.3 points of 15%
    assert torch.equal(labels[chosen], ids[chosen])  # the labels are the original tokens
    assert torch.equal(inputs[~chosen], ids[~chosen])  # positions not chosen are untouched
    masked = inputs[chosen] == mask_id
    kept = inputs[chosen] == ids[chosen]
    replaced = ~masked & ~kept
    # A random replacement hits the original token 1 time in 1000, so "kept" is 10% + 0.01%.
    assert abs(float(masked.float().mean()) - 0.8) < 0.01
    assert abs(float(replaced.float().mean()) - 0.1) < 0.01
    assert abs(float(kept.float().mean()) - 0.1) < 0.01
    assert int(inputs[chosen][replaced].max()) < vocab  # random tokens are real tokens, never [MASK]


def test_every_sequence_gets_a_prediction_and_masks_repeat_with_the_seed() -> None:
    ids = torch.randint(0, 50, (64, 4))
    a = mask_tokens(ids, 50, 50, 0.05, torch.Generator().manual_seed(3))
    b = mask_tokens(ids, 50, 50, 0.05, torch.Generator().manual_seed(3))
    assert ((a[1] != IGNORE).sum(dim=1) >= 1).all()  # 5% of 4 positions: most rows would have none
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_encoder_attends_both_ways_and_has_a_mask_row() -> None:
    torch.manual_seed(0)
    model = BERT(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=32, dropout=0.0).eval()
    assert model.mask_id == 40 and model.transformer.wte.num_embeddings == 41
    x = torch.randint(0, 40, (2, 12))
    changed = x.clone()
    changed[:, -1] = model.mask_id
    with torch.no_grad():
        out, out2 = model(x), model(changed)
    assert out.shape == (2, 12, 40)  # [MASK] is an input, never a prediction
    assert (out[:, 0] - out2[:, 0]).abs().amax() > 1e-4  # the first position sees the last one


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # a bare loop: no trainer to log to
def test_masked_lm_pretraining_learns_a_repeated_text() -> None:
    torch.manual_seed(0)
    model = BERT(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, lr=3e-3)
    pattern = torch.arange(16) % 7  # a periodic sequence: every masked token follows from its neighbours
    x = pattern.repeat(16, 1)
    opt = model.build_optimizer()
    losses = []
    for _ in range(120):
        loss = model.shared_step((x, x), "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[:10]) / 10 > 2.5 and sum(losses[-10:]) / 10 < 0.3, (losses[:3], losses[-3:])


def test_evaluation_masks_are_the_same_every_epoch() -> None:
    torch.manual_seed(0)
    model = BERT(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16).eval()
    x = torch.randint(0, 30, (4, 16))

    def epoch() -> list[float]:
        model.on_validation_epoch_start()
        with torch.no_grad():
            return [float(model.shared_step((x, x), "val")) for _ in range(3)]

    first, second = epoch(), epoch()
    assert first == second and len(set(first)) == 3  # repeatable per batch, different between batches
