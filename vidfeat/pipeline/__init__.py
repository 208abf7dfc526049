"""Extraction: videos in, results into the store.

``driver`` plans a run from the store and the model card, opens the writer, hands the videos to an
executor and finalizes the file: :func:`vidfeat.pipeline.driver.extract` is the one entry. The
executors: ``local`` (decode workers in processes, from ``workers``, with their shared-memory
budget ``shm`` and the stall ``watchdog``) and ``ray`` (actors); both run batches through the
per-GPU ``runner`` (model set-up, batch size fitting in ``batchsize``, one batch in flight).
``shard`` splits a collection between processes, ``launch`` starts ranks (``--gpus``, torchrun,
SLURM) and merges their shards, ``query`` embeds a query video for search, and ``progress``
shows counts, rates and ETA through a callback object: nothing here prints by itself.
"""
