"""Our Bradley–Terry loss equals TRL RewardTrainer's on the same weights and data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rewardmodel.lib.data import PairCollator, parse_pair
from rewardmodel.lib.losses import bradley_terry_loss
from rewardmodel.lib.model import RewardModel
from tests.tiny import llama_config, llama_tokenizer

ROWS = [
    {"prompt": "hello world", "chosen": " good good yes", "rejected": " bad", "margin": 0.5},
    {"prompt": "the cat is", "chosen": " very good", "rejected": " not good and bad bad", "margin": 1.0},
    {"prompt": "q1 q2 q3 q4 q5", "chosen": " yes", "rejected": " no", "margin": 0.0},
    {"prompt": "it was", "chosen": " a dog and a cat", "rejected": " maybe", "margin": 2.0},
]


@pytest.mark.parametrize("with_margin", [False, True])
def test_loss_matches_trl_reward_trainer(tmp_path: Path, with_margin: bool) -> None:
    datasets = pytest.importorskip("datasets")
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig as TRLConfig
    from trl import RewardTrainer

    tok = llama_tokenizer()
    torch.manual_seed(0)
    seqcls = LlamaForSequenceClassification(llama_config(tok, num_labels=1))
    rows = ROWS if with_margin else [{k: v for k, v in r.items() if k != "margin"} for r in ROWS]
    trainer = RewardTrainer(
        model=seqcls,
        args=TRLConfig(output_dir=str(tmp_path), bf16=False, report_to="none", use_cpu=True,
                       per_device_train_batch_size=len(rows)),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
    )
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    trl_ids = trl_batch["input_ids"].clone()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trl_batch)

    # Our model on the very same backbone weights and score head.
    ours = RewardModel(seqcls.model, tok, pooling="auto")
    with torch.no_grad():
        ours.head.weight.copy_(seqcls.score.weight)
    encoded = ours.formatter.encode([parse_pair(r) for r in rows], max_length=1024)
    batch = PairCollator(ours.pad_id)(encoded)
    assert torch.equal(batch.input_ids, trl_ids)  # identical inputs
    with torch.no_grad():
        chosen, rejected = ours.pair_rewards(batch)
        loss = bradley_terry_loss(chosen[:, 0], rejected[:, 0], batch.margin if with_margin else None)
    assert abs(float(loss) - float(trl_loss)) < 1e-5


def test_encoder_rewards_match_trl_sequence_classification(tmp_path: Path) -> None:
    """BERT: our [CLS] + pretrained pooler + head equals BertForSequenceClassification's logits
    up to its head bias, which cancels in every pairwise loss."""
    from transformers import BertForSequenceClassification

    from tests.tiny import bert_tokenizer, save_tiny_bert

    folder = save_tiny_bert(tmp_path / "bert")
    tok = bert_tokenizer()
    seqcls = BertForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    ours = RewardModel(seqcls.bert, tok, pooling="auto").eval()
    with torch.no_grad():
        ours.head.weight.copy_(seqcls.classifier.weight)
    batch = tok(["hello world yes", "the cat is very good", "no"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = seqcls(**batch).logits[:, 0] - seqcls.classifier.bias
        got = ours(batch["input_ids"], batch["attention_mask"])[:, 0]
    assert torch.allclose(got, expected, atol=1e-6)
