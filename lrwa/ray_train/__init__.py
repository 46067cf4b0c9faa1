"""Ray Train adapter: the engine, data parallel on N workers, CPU (gloo) or GPU (NCCL).

`run_distributed` is the single-process `run_distillation` spread over N Ray Train
(V2) workers, with the same run folder. The engine stays Ray-free; this package only
passes it two hooks (`average_gradients`, `inner_average`) and a per-worker `stream`.

    driver.py       run_distributed: checks, one TorchTrainer, then the run folder
    cluster.py      starting Ray quietly; fitting the workers to the cluster first
    worker.py       what each worker runs; its shard of every checkpoint
    collectives.py  gradient and metric averaging over the workers (torch.distributed)
    run_folder.py   config.yaml, metrics.parquet, summary.json, ... and ray_run.json

Decisions:
- The batch is global. `batch_size` counts every worker's fresh samples, so each of N
  workers draws batch_size/N per step from its own noise stream (seed + rank); a batch
  that does not split evenly is refused. Learning rate and schedule stay those of the
  single-process run, because the averaged gradient is that of the global batch.
- Gradients are averaged with `torch.distributed.all_reduce` before every generator and
  student step; in the meta step grad L_acq is averaged before theta' is formed, with
  an autograd-aware all-reduce in the second-order step (`collectives.py`). On a model
  without BatchNorm, N workers follow the single-process run on the concatenated
  batch up to float rounding (tested). DistributedDataParallel is not used: it does
  not support the meta step's double backward.
- What is per worker: the memory bank (each holds buffer_size/N of its own samples and
  replays replay_ratio x its local batch, so the replayed batch is global too), the
  generative-replay VAE (each learns its own worker's stream), and everything computed
  from one batch: BatchNorm statistics (the student's by default, the generator's
  always) and the generator loss's batch-mean entropy term. With BatchNorm, N workers
  are therefore N x (batch/N)-sample batches, as in any data-parallel training.
  `sync_batchnorm=True` makes the student's BatchNorm global (SyncBatchNorm); it needs
  NCCL (a whole GPU per worker) and first-order or non-meta updates, because
  SyncBatchNorm's backward cannot be differentiated again.
- Backend: NCCL when every worker has a whole GPU, else gloo (CPU, or workers sharing a
  GPU). Each worker's device comes from `ray.train.torch.get_device()`; CPU workers set
  torch's thread count to the CPUs they reserve. By default each worker reserves the
  largest whole number of CPUs at which all N fit on the cluster.
- Reporting: rank 0 evaluates on the test split; every worker calls `ray.train.report`
  once per epoch (it is a barrier), with a checkpoint every `checkpoint_every` epochs
  and at the last. Losses are averaged over workers; samples/s counts all of them.
- Checkpoints: each rank writes its own shard into the same checkpoint directory
  (`worker.py`); a restarted or resumed worker restores rank 0's state and then its own
  replay, noise and RNG streams and BatchNorm buffers.
- Who writes the run folder: the driver (with run.py's and sinks.py's writers), because
  on a multi-node cluster its disk is where the user looks. It holds the folder for the
  whole call (`lrwa.folder_lock`), as a single-process run does. Rank 0 streams each
  epoch's row to it through a queue actor, so progress prints and
  metrics.parquet/summary.json update live; the final files (metrics.parquet,
  summary.json, learning_curve.png, student.pt) are written from the last checkpoint,
  whose history holds each epoch once, before `on_epoch` sees the last epoch.
  `Result.metrics_dataframe` is not used: it keeps only reports that carried a
  checkpoint.
- Faults: `FailureConfig(max_failures)`; a failed worker group restarts from the last
  checkpoint and re-runs the epochs after it, replacing (never duplicating) their rows.
- Resume: Train V2 resumes a run by name and storage (`TorchTrainer.restore` is
  deprecated and raises, ray-project/ray#49454). The name is derived from the absolute
  out_dir and recorded with the storage and worker count in `ray_run.json`; storage
  defaults to `<out_dir>/ray` and may be any URI Ray accepts (s3://, gs://, NFS path;
  multi-node runs need shared storage). A resume must use the same number of workers.
- Resources are checked against the cluster before the trainer starts, so too many
  workers or GPUs fail in seconds, not by waiting forever.
- Quiet: Ray is started without dashboard and without forwarding worker logs, and Ray
  Train logs warnings only; Ray's logs stay in its log folder. The controller's poll
  interval is lowered (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1), since every report
  otherwise waits up to its 2 s default.
"""

from lrwa.ray_train.driver import per_worker_config, run_distributed

__all__ = ["per_worker_config", "run_distributed"]
