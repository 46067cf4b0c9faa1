"""The `lrwa` command line: teacher training and evaluation, distillation, the quickstart.

Every user mistake surfaces as one line on stderr and exit status 2 (`--debug`
shows the traceback instead); argparse's own errors are folded into the same
one-line form, and so is a write that fails for want of space anywhere below.
Flags default to None so that only what the user typed overrides the config
file and the data set's preset. Every folder or file a command will write is
checked (`output_paths`) before any work that its failure would waste.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lrwa.atomic import out_of_space
from lrwa.errors import LrwaError
from lrwa.presets import SYSTEM_PRESETS
from lrwa.signals import stop_like_ctrl_c
from lrwa.yaml_files import clipped

EXIT_USER_ERROR = 2
STARTED = time.perf_counter()  # the command's wall time counts its imports of torch and Ray
MAX_SEED = 2**32 - 1  # numpy's seed range, as the config's `seed` key
# The registries' names, spelled out so that `--help` does not import torch; a test keeps
# them equal to lrwa.data.DATASETS and lrwa.models.MODELS.
DATASET_NAMES = ("mnist5k", "digits", "cifar10", "cifar100", "svhn")
MODEL_NAMES = ("lenet5", "lenet5-half", "resnet18", "resnet34", "wrn-16-2", "wrn-40-2")
PRESET_NAMES = tuple(SYSTEM_PRESETS)  # lrwa.presets imports nothing heavy


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USER_ERROR)


def _number_type(kind: type, low: float, high: float | None = None) -> Any:
    """An argparse type: a finite `kind` in [low, high], refused in argparse's one line."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: "
                                             f"{clipped(repr(text))}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bound = f"at least {low:g}" if high is None else f"in [{low:g}, {high:.0f}]"
            number = "a finite number of " if kind is float else ""
            raise argparse.ArgumentTypeError(f"must be {number}{bound}, got {clipped(text)}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _config_default(key: str) -> str:
    """"(default: ...)" for config key `key`: DistillConfig's value, and the small preset's
    where the offline data sets use another; "" for keys without a plain default."""
    import dataclasses

    from lrwa.config import SMALL_PRESET, DistillConfig

    fields = {field.name: field for field in dataclasses.fields(DistillConfig)}
    if key not in fields or fields[key].default is None or isinstance(fields[key].default, bool):
        return ""
    default = fields[key].default
    small = SMALL_PRESET.get(key, default)
    preset = f"; mnist5k and digits: {small}" if small != default else ""
    return f"(default: {default}{preset})"


def _distill_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of `lrwa distill`, named as the config keys they override; each help names the
    config's default (flags default to None, so only what is typed overrides the file)."""
    def add(*flags: str, help: str | None = None, **options: Any) -> None:
        key = flags[0].lstrip("-").replace("-", "_")
        text = " ".join(part for part in (help, _config_default(key)) if part)
        parser.add_argument(*flags, help=text or None, **options)

    add("--teacher", help="teacher checkpoint (default: the embedded mnist5k LeNet-5)")
    add("--teacher-arch", help="architecture of a plain state_dict teacher")
    add("--dataset", help="dataset of a plain state_dict teacher")
    add("--student", help="student architecture, e.g. lenet5-half, resnet18")
    add("--preset", choices=PRESET_NAMES,
        help="a named system, trained as its authors' code trains it (docs/presets.md); "
             "on mnist5k and digits its method at lrwa's CPU sizes; other flags override it")
    add("--mode", choices=("acquire", "joint", "meta"),
        help="student update: acquire (fresh samples only), joint (the baselines) or meta "
             "(LRWA)")
    add("--replay", choices=("none", "memory", "generative"),
        help="replay of past samples (acquire takes none)")
    add("--alpha", type=float, help="inner step size of the meta update")
    add("--first-order", action="store_true", default=None,
        help="drop the second-order terms of the meta gradient")
    add("--replay-loss", choices=("separate", "concatenated"),
        help="separate: L_acq + L_ret (the paper); concatenated: one mean over "
             "[fresh; replayed] (LRA's code)")
    add("--detach-inner", action="store_true", default=None,
        help="build theta' from detached weights, as LRA's released code does (meta only)")
    add("--buffer-size", type=int, help="memory bank capacity in samples")
    add("--replay-ratio", type=float, help="replayed batch as a fraction of the fresh batch")
    add("--generator-loss", choices=("pre-dfkd", "dfad", "jsd-nats"),
        help="the generator's loss: PRE-DFKD's (as LRA computes it), DFAD's, or lrwa's "
             "earlier jsd-nats")
    add("--epochs", type=int)
    add("--iters-per-epoch", type=int, help="generator + student iterations per epoch")
    add("--batch-size", type=int, help="fresh pseudo samples per step")
    add("--seed", type=int)
    add("--device", choices=("auto", "cpu", "cuda"), help="auto: a GPU when one is visible")
    add("--data-root", help="folder with CIFAR/SVHN files")
    add("--download", action="store_true", default=None, help="download CIFAR/SVHN if missing")
    add("--torch-threads", type=int,
        help="torch's CPU threads, part of the run's numbers; 0: torch's default (every "
             "core); config.yaml records the count used")
    add("--deterministic", action="store_true", default=None,
        help="deterministic GPU kernels (torch.use_deterministic_algorithms)")
    add("--bf16", action="store_true", default=None,
        help="bf16 autocast of the student update (CUDA only)")
    add("--channels-last", action="store_true", default=None,
        help="channels_last memory format for the conv nets (a GPU speed option)")
    add("--config", help="YAML file of config keys (e.g. a study's best_config.yaml); "
                         "flags override it")
    add("--out", required=True, help="run folder (refused if it already holds a run)")
    add("--resume", action="store_true", help="continue the run in --out (says so and "
                                               "stops when it has run all its epochs)")
    ray = parser.add_argument_group("data parallel (Ray Train)")
    ray.add_argument("--workers", type=_number_type(int, 1), default=1,
                     help="data-parallel workers; 1 keeps the plain process")
    ray.add_argument("--gpus-per-worker", type=_number_type(float, 0), default=0.0)
    ray.add_argument("--storage", help="Ray run storage (a folder or s3://...)")
    ray.add_argument("--sync-batchnorm", action="store_true",
                     help="SyncBatchNorm across GPU workers")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="lrwa", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    teacher = commands.add_parser("teacher", help="train or evaluate a teacher")
    teacher_commands = teacher.add_subparsers(dest="teacher_command", required=True,
                                              parser_class=_OneLineParser)
    train = teacher_commands.add_parser("train", help="train a teacher with the dataset's recipe")
    train.add_argument("--dataset", required=True, choices=DATASET_NAMES,
                       help="data set to train on; mnist5k and digits ship with lrwa, the "
                            "others are read from --data-root")
    train.add_argument("--arch", required=True, choices=MODEL_NAMES,
                       help="teacher architecture")
    train.add_argument("--out", required=True, help="checkpoint file to write")
    train.add_argument("--epochs", type=int,
                       help="training epochs (default: the data set's recipe: mnist5k 12, "
                            "digits 40, svhn 40, cifar10 and cifar100 200)")
    train.add_argument("--seed", type=_number_type(int, 0, MAX_SEED), default=0,
                       help="random seed (default: %(default)s)")
    train.add_argument("--data-root", help="folder holding CIFAR/SVHN files")
    train.add_argument("--download", action="store_true",
                       help="download CIFAR/SVHN into --data-root if missing")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="default: %(default)s (a GPU when one is visible)")
    train.add_argument("--force", action="store_true", help="replace an existing --out file")
    evaluate = teacher_commands.add_parser("eval", help="print a checkpoint's test accuracy")
    evaluate.add_argument("file")
    evaluate.add_argument("--arch", help="architecture of a plain state_dict")
    evaluate.add_argument("--dataset", help="dataset of a plain state_dict")
    evaluate.add_argument("--data-root")

    _distill_flags(commands.add_parser(
        "distill", help="distil a student from a teacher",
        description="Distil a student from a teacher into a run folder. Each config key is "
                    "DistillConfig's default (the paper's CIFAR values), then the small preset "
                    "where the teacher's data set is mnist5k or digits, then --config, then the "
                    "flags typed. The run's folder records the resolved config.yaml."))

    from lrwa.tune.commands import QUICKSTART_MINUTES, add_storage_flag

    quickstart = commands.add_parser(
        "quickstart", help="the quickstart study on the embedded default, end to end (about "
        f"{QUICKSTART_MINUTES} min on 2 CPU cores, the teacher's training included)")
    add_storage_flag(quickstart)

    from lrwa.tune.commands import add_commands

    add_commands(commands)  # `lrwa tune` and `lrwa report`
    return parser


def _explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"command", "debug", "config", "out", "resume", "workers", "gpus_per_worker",
            "storage", "sync_batchnorm"}
    return {key: value for key, value in vars(args).items()
            if key not in skip and value is not None}


def _print_epoch(row: dict[str, Any]) -> None:
    def show(value: float, scale: float = 1.0, digits: int = 3) -> str:
        return "  -  " if math.isnan(value) else f"{value * scale:.{digits}f}"

    print(f"epoch {row['epoch']:>4}  test_acc {show(row['test_acc'], 100, 2)}%  "
          f"loss_acq {show(row['loss_acq'])}  loss_ret {show(row['loss_ret'])}  "
          f"loss_gen {show(row['loss_gen'])}  grad_cos {show(row['grad_cos'])}  "
          f"{row['samples_per_s']:.0f} samples/s", flush=True)


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    print(f"best {100 * summary['best_acc']:.2f}%  mean {100 * summary['mean_acc']:.2f}%  "
          f"final {100 * summary['final_acc']:.2f}%  var {1e4 * summary['var_acc']:.2f} %^2  "
          f"max drop {100 * summary['max_drop']:.2f} pts  teacher "
          f"{100 * summary['teacher_acc']:.2f}%")
    print(f"results in {out_dir}/ (metrics.parquet, summary.json, learning_curve.png)")


def _distill(args: argparse.Namespace) -> None:
    from lrwa.config import build_config, checked_values, load_yaml
    from lrwa.folder_lock import LOCK_FILE, hold_folder
    from lrwa.output_paths import check_folder
    from lrwa.run import HOLDER, prepare_out_dir, resolve_teacher, run_distillation

    overrides = _explicit_overrides(args)
    out_dir = Path(args.out)
    check_folder(out_dir, "--out")
    if args.storage and "://" not in args.storage:
        check_folder(args.storage, "--storage")
    run = run_distillation
    extra: dict[str, Any] = {}
    if args.workers > 1 or args.gpus_per_worker > 0:
        from lrwa.ray_train import run_distributed as run

        extra = {"workers": args.workers, "gpus_per_worker": args.gpus_per_worker,
                 "storage": args.storage, "sync_batchnorm": args.sync_batchnorm}
    if args.resume and args.workers == 1 and (out_dir / "ray_run.json").is_file():
        raise LrwaError(f"{out_dir} is a data-parallel run; resume it with the same --workers")
    file_values = load_yaml(args.config) if args.config else {}
    # Each layer on its own first: a bad value in the file is reported even where a flag
    # would replace it.
    checked_values(file_values)
    checked_values(overrides)
    if args.resume:
        summary = run(None, out_dir, resume=True, overrides={**file_values, **overrides},
                      on_epoch=_print_epoch, **extra)
        if summary.get("already_complete"):
            print(f"{out_dir} is already complete: all {summary['epochs_run']} epochs ran; "
                  "nothing to resume (pass --epochs N to extend it)")
    else:
        # Only to find the teacher: the keys that depend on the data set's preset are
        # neutral here, and the whole config is checked once the data set is known.
        draft = build_config(None, file_values, {**overrides, "mode": "acquire",
                                                 "replay": "none", "detach_inner": False})
        if draft.teacher is None:
            # The embedded teacher takes a while to train once; its data set is known without it.
            from lrwa.teacher import DEFAULT_TEACHER

            default_dataset = DEFAULT_TEACHER["dataset"]
            if draft.dataset not in (None, default_dataset):
                raise LrwaError(f"--dataset {draft.dataset} needs --teacher: the embedded "
                                f"teacher is trained on {default_dataset}")
            build_config(default_dataset, file_values, overrides)
        # Refuse a used --out before loading a teacher: one a run is writing now (a lock
        # file exists only where a run has been), then one that holds another run.
        if (out_dir / LOCK_FILE).is_file():
            with hold_folder(out_dir, HOLDER):
                pass
        prepare_out_dir(out_dir, resume=False)
        teacher = resolve_teacher(draft)
        config = build_config(teacher.metadata["dataset"], file_values, overrides)
        summary = run(config, out_dir, teacher=teacher, on_epoch=_print_epoch, **extra)
    _print_summary(summary, out_dir)


def _quickstart(args: argparse.Namespace) -> None:
    from lrwa.tune.commands import run_quickstart

    run_quickstart(args.storage)


def _teacher(args: argparse.Namespace) -> None:
    from lrwa.distiller import resolve_device
    from lrwa.output_paths import check_file
    from lrwa.teacher import evaluate_on_split, load_teacher, save_teacher, train_teacher

    if args.teacher_command == "train":
        out = Path(args.out)
        check_file(out, "--out")  # before training: a teacher that cannot be saved is lost
        if out.exists() and not args.force:
            raise LrwaError(f"{out} already exists; pass --force to replace it")
        if args.epochs is not None and args.epochs < 1:
            raise LrwaError(f"--epochs must be at least 1, got {args.epochs}")
        teacher = train_teacher(args.dataset, args.arch, epochs=args.epochs, seed=args.seed,
                                data_root=args.data_root, download=args.download,
                                device=str(resolve_device(args.device)))
        save_teacher(teacher, out)
        print(f"test accuracy {100 * teacher.metadata['test_acc']:.2f}%  -> {out}  "
              f"({time.perf_counter() - STARTED:.0f} s in all, "
              f"{teacher.metadata['train_seconds']:.0f} s of it training)")
        return
    teacher = load_teacher(args.file, args.arch, args.dataset)
    accuracy = evaluate_on_split(teacher.model, teacher.metadata["dataset"], "test",
                                 data_root=args.data_root)
    print(f"{args.file}: {teacher.metadata['arch']} on {teacher.metadata['dataset']}, "
          f"test accuracy {100 * accuracy:.2f}%")


COMMANDS = {"distill": _distill, "quickstart": _quickstart, "teacher": _teacher}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop_like_ctrl_c()  # SIGTERM and SIGHUP (preemption, ray stop, a lost SSH) as Ctrl+C
    try:
        handler = COMMANDS.get(args.command) or args.func
        handler(args)
    except LrwaError as error:
        if args.debug:
            raise
        sys.stderr.write(f"lrwa: error: {error}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        again = ("rerun the same command to continue" if args.command in ("tune", "quickstart")
                 else "rerun with --resume")
        sys.stderr.write(f"lrwa: interrupted; completed epochs are saved, {again}\n")
        return 130
    except Exception as error:
        # A full disk is the user's to fix wherever the write was; lrwa's own writers say
        # which file (atomic.py), this catches the writes of the libraries it drives.
        cause = out_of_space(error)
        if cause is None or args.debug:
            raise
        sys.stderr.write(f"lrwa: error: cannot write {cause.filename or 'a file'}: "
                         f"{cause.strerror}\n")
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
