"""Training: `python train.py` (or `deepspeed train.py`) builds a Config and calls `videodit.train.trainer.run`.

    distributed.py  process groups, the DeepSpeed config, DeepSpeed's checkpoints loaded without unpickling code
    batches.py      the dataset and the batch plan derived from (seed, step)
    tasks.py        what a step computes (DiT flow loss, VAE loss) and what a task exports
    trainer.py      the loop, EMA, resume, export
    parallelize.py  regional compile and activation checkpointing, applied from outside the model
    logs.py         wandb and the loss curve
"""


class TrainError(RuntimeError):
    """A problem the user can fix (bad data path, batch that does not divide, ...): message, exit code 2."""
