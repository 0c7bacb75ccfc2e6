"""The Lightning callback writes the same run layout; checked against brute force: the whole
dataset is every update's batch, so the stored train gradient at step k and the loss logged
for update k+1 equal those of the saved step-k model on the full dataset. Skips cleanly
without the optional ``lightning`` extra."""

from __future__ import annotations

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from harness import learning_dynamics as ld  # noqa: E402
from harness.capture import HarnessLightningCallback, Schedule  # noqa: E402
from harness.capture import layout as L  # noqa: E402
from harness.lm import per_token_loss, random_token_batches, tiny_gpt_neox  # noqa: E402
from harness_plugins.models.local_run import LocalRunFamily  # noqa: E402

torch.set_num_threads(1)
VOCAB, SEQ = 64, 16


class TinyLM(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = tiny_gpt_neox(VOCAB)

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        return per_token_loss(self.model(input_ids=ids).logits, ids).mean()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def test_lightning_capture_matches_full_batch_truth(tmp_path):
    data = random_token_batches(VOCAB, 1, 8, SEQ, seed=1)[0]
    val = random_token_batches(VOCAB, 1, 4, SEQ, seed=2)[0]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4, shuffle=True)
    cb = HarnessLightningCallback(tmp_path / "run", val_batch=val, schedule=Schedule(every=1, log_until=0),
                                  optimizer_state=True)
    trainer = pl.Trainer(max_steps=3, accumulate_grad_batches=2, callbacks=[cb], accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(TinyLM(), loader)
    root = tmp_path / "run"
    assert L.complete_steps(root) == [0, 1, 2, 3]
    log = {r["step"]: r for r in L.read_loss_log(root)}
    assert sorted(log) == [1, 2, 3] and log[3]["tokens_seen"] == 3 * 8 * SEQ
    fam = LocalRunFamily(root=str(root))
    refs = {r.step: r for r in fam.checkpoints()}
    for step in (0, 2):
        ck = fam.load(refs[step])
        loss = per_token_loss(ck.model(input_ids=data).logits, data).mean()
        assert log[step + 1]["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
        name = "gpt_neox.layers.0.attention.dense.weight"
        (g,) = torch.autograd.grad(loss, [dict(ck.model.named_parameters())[name]])
        stored = dict(ck.field("gradient", ["layers.0.attention.dense"]))["layers.0.attention.dense"]
        torch.testing.assert_close(stored, g, rtol=1e-4, atol=1e-7)
        assert ck.optimizer_state()["optimizer"] == "AdamW"
    assert refs[1].learning_rate == pytest.approx(3e-3)
    with pytest.raises(ld.NotStoredError):
        list(fam.load(refs[3]).field("gradient"))
