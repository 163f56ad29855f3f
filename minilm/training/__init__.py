"""The training loop and what it needs.

    trainer.py         one loop for pretraining and fine-tuning: exact gradient accumulation,
                       evaluation, early stopping, checkpoints, Ctrl-C
    optim.py           AdamW parameter groups, Muon for the blocks' matrices, warmup + cosine
    muon.py            our Muon optimizer
    freeze.py          what trains: adapters only, the top-k blocks, LoRA+ groups
    early_stopping.py  stop when the validation metric stops improving
    distributed.py     data parallelism under torchrun (a no-op on one process)
"""
