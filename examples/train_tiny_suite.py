"""Train a tiny suite of four GPT-NeoX widths with transformers' Trainer, recording learning dynamics.

    python examples/train_tiny_suite.py
    python -m harness model=local_run model.root=runs/suite 'metric=[interference,deceleration,transport]'

About a minute per size on a laptop CPU; everything is offline (Python's own documentation text).
"""
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Trainer, TrainingArguments
from harness.capture import HarnessCallback, Schedule
from harness.data import fixed_batches, load_corpus, token_blocks, train_tokenizer

corpus = load_corpus({"name": "pydoc"})                              # Python's docs, always offline
tok = train_tokenizer(corpus.texts, vocab_size=512, cache_dir="runs/tok")
blocks = token_blocks(tok, corpus.texts, seq_len=64)
train = fixed_batches(blocks, n_batches=1, batch_size=len(blocks) // 2, seed=0, split="train",
                      dataset_id=corpus.dataset_id)
val = fixed_batches(blocks, n_batches=1, batch_size=16, seed=0, split="val", dataset_id=corpus.dataset_id)
ds = [{"input_ids": r, "labels": r} for r in train.batches[0]]

for width in (32, 64, 96, 128):       # 4 sizes: transport fits need >= 3, its compressibility tests >= 4
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=width, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=4 * width, max_position_embeddings=64, tie_word_embeddings=False))
    cb = HarnessCallback(f"runs/suite/w{width}", val_batch=val.batches[0], suite="runs/suite",
                         size=f"w{width}", schedule=Schedule(every=50, log_until=32),
                         optimizer_state=True)                      # lets interference step with AdamW
    args = TrainingArguments(output_dir=f"runs/trainer/w{width}", max_steps=300, per_device_train_batch_size=8,
                             learning_rate=1e-3, seed=0,             # same seed: same data order for every size
                             max_grad_norm=0.0,                      # store raw (unclipped) train gradients
                             save_strategy="no", report_to=[], use_cpu=True)
    Trainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb]).train()
