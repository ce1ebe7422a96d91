"""Helpers shared by ``train_vae.py`` and ``train_ldm.py``: flags, Accelerator, data, checkpoints, logs.

The training loops themselves stay in the scripts. What lives here is what both scripts need in
exactly the same form:

- the run and data flags (:func:`add_run_args`, :func:`add_data_args`) and the data they load
  (:func:`load_data`, :func:`save_data_config`);
- :func:`build_accelerator`, which refuses fp16 on a CPU instead of silently training in fp32;
- the output-folder guard (:func:`check_output_dir`) and checkpoint handling: a checkpoint is
  written as ``checkpoint-<step>.tmp`` by every rank and renamed to ``checkpoint-<step>`` once
  complete, so ``--resume_from_checkpoint latest`` never picks a half-written one
  (:func:`save_checkpoint`, :func:`find_checkpoint`, :func:`load_checkpoint`);
- :func:`epoch_batches`: the per-rank batches of an epoch, a pure function of (seed, epoch), which
  makes a resumed run see exactly the batches the uninterrupted run would have seen;
- :class:`MetricLog` (``train_log.jsonl``) and :func:`setup_logging` (``logs/train.log``).
"""

import argparse
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration

from .data import load_fmri, make_splits
from .data.splits import STRATEGIES

logger = get_logger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE = "training_state.json"
DATA_CONFIG = "data_config.json"
SPLITS_FILE = "splits.npz"
SPACE_DIR = "space"
TRAIN_LOG = "train_log.jsonl"

# Defaults of the data flags. The flags themselves default to None so that train_ldm.py can tell
# "not given" from "given" and inherit the VAE run's data settings (see resolve_data_args).
DATA_DEFAULTS = {
    "data_path": None,
    "data_key": None,
    "label_key": None,
    "mask": None,
    "surface_order": None,
    "nonfinite": "raise",
    "split": "contiguous",
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "split_gap": 2,
    "split_seed": 0,
    "test_keys": None,
    "val_keys": None,
    "test_runs": None,
    "test_subjects": None,
}


# -- flags -------------------------------------------------------------------------------------


def add_run_args(parser: argparse.ArgumentParser, default_output_dir: str) -> None:
    """Flags of the training run, named as in diffusers' ``train_unconditional.py``."""
    g = parser.add_argument_group("run")
    g.add_argument("--config", type=str, default=None, help="YAML file whose keys are these flags' names.")
    g.add_argument("--output_dir", type=str, default=default_output_dir,
                   help="Where the model, logs, checkpoints and data record are written.")
    g.add_argument("--overwrite_output_dir", action=argparse.BooleanOptionalAction, default=False,
                   help="Train into a folder that holds another run; its checkpoints and train log are removed.")
    g.add_argument("--seed", type=int, default=0,
                   help="Seed of initialisation, batches and noise (each rank gets seed + rank).")
    g.add_argument("--num_epochs", type=int, default=100, help="Epochs to train when --max_train_steps is not given.")
    g.add_argument("--max_train_steps", type=int, default=None,
                   help="Optimizer steps to train; overrides --num_epochs when given.")
    g.add_argument("--train_batch_size", type=int, default=64, help="Per device.")
    g.add_argument("--eval_batch_size", type=int, default=256,
                   help="Batch size for validation and for encoding latents.")
    g.add_argument("--dataloader_num_workers", type=int, default=0,
                   help="DataLoader worker processes (0 reads in the main process).")
    g.add_argument("--learning_rate", type=float, default=1e-4, help="Peak learning rate of AdamW.")
    g.add_argument("--lr_scheduler", type=str, default="cosine",
                   choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                            "constant_with_warmup"])
    g.add_argument("--lr_warmup_steps", type=int, default=500, help="Optimizer steps of linear warm-up.")
    g.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    g.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    g.add_argument("--adam_weight_decay", type=float, default=1e-6, help="AdamW weight decay.")
    g.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="Micro-batches accumulated per optimizer step.")
    g.add_argument("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"],
                   help="fp16 needs a GPU; bf16 also works on CPUs.")
    g.add_argument("--checkpointing_steps", type=int, default=500,
                   help="Save a resumable checkpoint every N optimizer steps.")
    g.add_argument("--checkpoints_total_limit", type=int, default=None,
                   help="Keep at most N checkpoints (oldest removed after a new one is complete); all if unset.")
    g.add_argument("--resume_from_checkpoint", type=str, default=None,
                   help="A checkpoint folder (path, or name inside --output_dir), or 'latest'. 'latest' with no "
                        "checkpoint yet starts a fresh run in a new or empty --output_dir (so one command both "
                        "starts and resumes a job); a named checkpoint that does not exist is an error.")
    g.add_argument("--validation_steps", type=int, default=500,
                   help="Validate every N optimizer steps (and at the end).")
    g.add_argument("--report_to", type=str, default=None, choices=["tensorboard", "wandb", "all", "none"],
                   help="Default: tensorboard when it is installed, else none. wandb only when asked.")
    g.add_argument("--logging_dir", type=str, default="logs", help="Inside --output_dir.")
    g.add_argument("--push_to_hub", action=argparse.BooleanOptionalAction, default=False,
                   help="Upload the final model and a model card to the Hub (never checkpoints or optimizer state).")
    g.add_argument("--hub_model_id", type=str, default=None, help="Default: the name of --output_dir.")
    g.add_argument("--hub_token", type=str, default=None,
                   help="Hub token (default: the one stored by `hf auth login`).")
    g.add_argument("--hub_private_repo", action=argparse.BooleanOptionalAction, default=False,
                   help="Create the Hub repo as private.")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Flags of :func:`fmri_diffusers.data.load_fmri` and :func:`fmri_diffusers.data.make_splits`."""
    d = DATA_DEFAULTS
    g = parser.add_argument_group("data (default in brackets)")
    g.add_argument("--data_path", type=str, nargs="+", default=None,
                   help="fMRI file(s): .npz, .npy, .mat, .nii(.gz) runs, surface files, Arrow, or example:<name>.")
    g.add_argument("--data_key", type=str, nargs="+", default=None, help="npz/mat/Arrow key(s) of the data.")
    g.add_argument("--label_key", type=str, nargs="+", default=None, help="npz/mat/Arrow key(s) of the labels.")
    g.add_argument("--mask", type=str, default=None, help="NIfTI mask image.")
    g.add_argument("--surface_order", type=str, nargs="+", default=None,
                   help="Surface files: one name per file, e.g. lh rh (default: from the file names).")
    g.add_argument("--nonfinite", type=str, default=None, choices=["raise", "mask"], help=f"[{d['nonfinite']}]")
    g.add_argument("--split", type=str, default=None, choices=list(STRATEGIES), help=f"[{d['split']}]")
    g.add_argument("--val_fraction", type=float, default=None, help=f"[{d['val_fraction']}]")
    g.add_argument("--test_fraction", type=float, default=None, help=f"[{d['test_fraction']}]")
    g.add_argument("--split_gap", type=int, default=None, help=f"Samples dropped between contiguous blocks "
                                                               f"[{d['split_gap']}].")
    g.add_argument("--split_seed", type=int, default=None, help=f"Seed of random split choices [{d['split_seed']}].")
    g.add_argument("--test_keys", type=str, nargs="+", default=None,
                   help="split=keys: the file keys held out for test (e.g. fmriTest).")
    g.add_argument("--val_keys", type=str, nargs="+", default=None,
                   help="split=keys: the file keys used for validation (default: a random val_fraction of the rest).")
    g.add_argument("--test_runs", type=int, nargs="+", default=None,
                   help="split=run: the runs held out for test (default: the last run).")
    g.add_argument("--test_subjects", type=str, nargs="+", default=None,
                   help="split=subject: the subjects held out for test (default: the last, sorted).")


def resolve_data_args(args: argparse.Namespace, inherited: dict | None = None) -> None:
    """Fill the data flags left unset (None): from ``inherited`` (a VAE run's data config), then the defaults."""
    for key, default in DATA_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, (inherited or {}).get(key, default))
    if not args.data_path:
        raise ValueError("--data_path is required (or a --pretrained_vae_model_name_or_path run with a data_config.json)")


def check_positive(args: argparse.Namespace, names: list[str]) -> None:
    """ValueError naming the first flag in ``names`` whose value is set and < 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")


def tracker_config(args: argparse.Namespace) -> dict:
    """The flags as a tracker config: TensorBoard rejects list values, so lists become strings."""
    return {k: (" ".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
            for k, v in vars(args).items() if k != "hub_token"}


# -- accelerator, output folder, logging -------------------------------------------------------


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    """An Accelerator for ``args`` (trackers, accumulation, precision), refusing fp16 on a CPU.

    Raises
    ------
    ValueError
        ``--mixed_precision fp16`` on a CPU: accelerate would silently train in fp32 while reporting fp16.
    """
    report_to = args.report_to
    if report_to is None:
        from accelerate.utils import is_tensorboard_available

        report_to = "tensorboard" if is_tensorboard_available() else "none"
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)),
    )
    if args.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError(
            "--mixed_precision fp16 needs a GPU: on a CPU accelerate trains in fp32 while reporting fp16. "
            "Use --mixed_precision bf16 (autocast works on CPUs) or --mixed_precision no."
        )
    return accelerator


def check_output_dir(args: argparse.Namespace, resuming: bool) -> None:
    """Refuse to train into a non-empty ``--output_dir`` unless resuming or ``--overwrite_output_dir``.

    With ``--overwrite_output_dir`` the old run's checkpoints and train log are removed later (by
    :func:`prepare_output_dir`) so that ``latest`` cannot pick them up; other files are overwritten as
    the new run writes them.
    """
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is a file; expected a folder")
    if resuming or args.overwrite_output_dir or not out.exists() or not any(out.iterdir()):
        return
    raise ValueError(
        f"--output_dir {out} already holds files (another run?). Pass --resume_from_checkpoint latest to "
        "continue it, --overwrite_output_dir to replace it, or choose another folder."
    )


def prepare_output_dir(args: argparse.Namespace, accelerator: Accelerator, resuming: bool) -> None:
    """Create the output folder (main process) after every check has passed; clear an overwritten run."""
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if args.overwrite_output_dir and not resuming:
            for old in out.glob("checkpoint-*"):
                shutil.rmtree(old)
            (out / TRAIN_LOG).unlink(missing_ok=True)
        setup_file_logging(out / "logs" / "train.log")
    accelerator.wait_for_everyone()


def setup_console_logging() -> None:
    """INFO lines with time and rank on the console (accelerate's logger prints on the main process only)."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO)


def setup_file_logging(path: Path) -> None:
    """Also write the log to ``path`` (main process; call once the output folder exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(h)  # a second run in the same process logs to its own file only
        h.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(name)s - %(message)s"))
    root.addHandler(handler)


# -- data --------------------------------------------------------------------------------------


def load_data(args: argparse.Namespace, n_processes: int):
    """Load the data and split it as the data flags say; check that a global batch fits the train split.

    Returns
    -------
    fmri : FMRIData
    splits : dict
        ``{"train", "val", "test"}`` -> sorted int64 indices.
    """
    paths = args.data_path[0] if len(args.data_path) == 1 else list(args.data_path)
    for p in args.data_path:
        if not p.startswith("example:") and not os.path.exists(p):
            raise ValueError(f"--data_path {p}: no such file or folder")
    keys = (lambda v: v[0] if v is not None and len(v) == 1 else v)
    fmri = load_fmri(paths, data_key=keys(args.data_key), label_key=keys(args.label_key), mask=args.mask,
                     nonfinite=args.nonfinite, surface_order=args.surface_order)
    splits = make_splits(fmri, args.split, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                         gap=args.split_gap, seed=args.split_seed, test_keys=args.test_keys,
                         val_keys=args.val_keys, test_runs=args.test_runs, test_subjects=args.test_subjects)
    n_train, global_batch = len(splits["train"]), args.train_batch_size * n_processes
    if global_batch > n_train:
        raise ValueError(
            f"--train_batch_size {args.train_batch_size} x {n_processes} process(es) = {global_batch} is larger "
            f"than the training split ({n_train} samples of {fmri.n_samples}); lower the batch size"
        )
    return fmri, splits


def save_data_config(output_dir, args: argparse.Namespace, fmri, splits: dict, extra: dict | None = None) -> None:
    """Write ``data_config.json`` (data flags, split sizes), ``splits.npz`` and ``space/`` (when the data has one).

    Evaluation and ``train_ldm.py`` read these to use the exact same data and split as the run.
    """
    out = Path(output_dir)
    config = {key: getattr(args, key) for key in DATA_DEFAULTS}
    config["data_path"] = [p if p.startswith("example:") else os.path.abspath(p) for p in args.data_path]
    config.update(
        source=str(fmri.source),
        n_samples=fmri.n_samples,
        n_voxels=fmri.n_voxels,
        split_sizes={k: int(len(v)) for k, v in splits.items()},
        space=SPACE_DIR if fmri.space is not None else None,
        **(extra or {}),
    )
    (out / DATA_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    np.savez(out / SPLITS_FILE, **splits)
    if fmri.space is not None:
        fmri.space.save(out / SPACE_DIR)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """This rank's batches (positions in ``range(n)``) for one epoch.

    One permutation per epoch, seeded by ``seed + epoch`` and the same on every rank, is cut into
    global batches of ``batch_size * world``; the last incomplete one is dropped (every rank steps the
    same number of times, which DDP needs) and rank ``r`` takes the ``r``-th slice of each. Being a pure
    function of its arguments, a resumed run re-creates the order without saving sampler state.
    """
    perm = np.random.default_rng(seed + epoch).permutation(n)
    global_batch = batch_size * world
    return [perm[start + rank * batch_size : start + (rank + 1) * batch_size]
            for start in range(0, n - global_batch + 1, global_batch)]


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Micro-batches per epoch and rank, as :func:`epoch_batches` yields them."""
    return n // (batch_size * world)


def total_train_steps(args: argparse.Namespace, n_train: int, world: int) -> int:
    """``--max_train_steps`` or, without it, ``--num_epochs`` worth of optimizer steps (sets the other flag)."""
    micro = steps_per_epoch(n_train, args.train_batch_size, world)
    if args.max_train_steps is None:
        args.max_train_steps = math.ceil(args.num_epochs * micro / args.gradient_accumulation_steps)
    args.num_epochs = math.ceil(args.max_train_steps * args.gradient_accumulation_steps / micro)
    return args.max_train_steps


# -- checkpoints -------------------------------------------------------------------------------


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints (``checkpoint-<step>``, not ``.tmp``) in ``output_dir``, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def find_checkpoint(output_dir, resume_from: str | None) -> Path | None:
    """The checkpoint named by ``--resume_from_checkpoint``: None, 'latest', a path or a name in ``output_dir``.

    Returns None for no resume, and for 'latest' when no complete checkpoint exists yet (a fresh start).

    Raises
    ------
    ValueError
        If an explicit checkpoint does not exist or is an unfinished ``.tmp`` folder.
    """
    if resume_from is None:
        return None
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    for candidate in (Path(resume_from), Path(output_dir) / resume_from):
        if candidate.is_dir() and CHECKPOINT_RE.match(candidate.name):
            return candidate
    raise ValueError(
        f"--resume_from_checkpoint {resume_from}: no complete checkpoint folder 'checkpoint-<step>' there or in "
        f"{output_dir} (found: {[p.name for p in list_checkpoints(output_dir)]}); use 'latest' or omit the flag"
    )


def save_checkpoint(accelerator: Accelerator, output_dir, step: int, total_limit: int | None, state: dict) -> Path:
    """Save the full training state as ``checkpoint-<step>``, atomically; keep the newest ``total_limit``.

    Every rank calls this (``save_state`` writes each rank's RNG state). The state goes into
    ``checkpoint-<step>.tmp``; once all ranks are done, the main process adds ``training_state.json``
    (``state``, e.g. the step and the best validation loss) and renames the folder. A run killed at any
    moment therefore leaves only complete ``checkpoint-*`` folders (and a ``.tmp`` that is ignored and
    removed by the next save at that step). Old checkpoints are deleted only after the new one is in place.
    """
    out = Path(output_dir)
    final, tmp = out / f"checkpoint-{step}", out / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINING_STATE).write_text(json.dumps({"global_step": step, **state}, indent=2) + "\n")
        if final.exists():  # e.g. resumed from an earlier checkpoint: this step is saved again
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(out)[:-total_limit]:
                shutil.rmtree(old)
        logger.info(f"Saved state to {final}")
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    """``accelerator.load_state(path)`` and return its ``training_state.json`` (``global_step``, ...)."""
    accelerator.load_state(str(path))
    state_file = Path(path) / TRAINING_STATE
    if state_file.is_file():
        return json.loads(state_file.read_text())
    return {"global_step": int(CHECKPOINT_RE.match(Path(path).name).group(1))}


def replace_dir(src, dst) -> None:
    """Move the complete folder ``src`` to ``dst``, replacing it.

    ``dst`` is first renamed to ``dst.old``: a kill at any moment leaves a complete ``dst`` or a complete
    ``dst.old``, never a half-written model. The next call restores a lone ``dst.old`` before going on.
    """
    src, dst = Path(src), Path(dst)
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        if dst.exists():
            shutil.rmtree(old)
        else:  # the last call was killed between its two renames: old is the only complete copy
            os.replace(old, dst)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def save_pretrained_atomically(model, dst) -> None:
    """``model.save_pretrained`` into ``dst.tmp``, then :func:`replace_dir` it onto ``dst``."""
    tmp = Path(str(dst) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    replace_dir(tmp, dst)


# -- metric log --------------------------------------------------------------------------------


class MetricLog:
    """``train_log.jsonl``: one ``{"step", "name", "value"}`` record per line (main process writes).

    On resume, records after the checkpoint's step (written by the interrupted run, possibly a torn last
    line) are dropped first, so the file holds one curve per metric as if the run had never stopped.
    Each record also goes to the accelerator's trackers.
    """

    def __init__(self, accelerator: Accelerator, path, resume_step: int | None = None):
        self.accelerator = accelerator
        self.path = Path(path)
        if accelerator.is_main_process and resume_step is not None and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record["step"] <= resume_step:
                    kept.append(line)
            self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, values: dict, step: int) -> None:
        self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                for name, value in values.items():
                    f.write(json.dumps({"step": step, "name": name, "value": float(value)}) + "\n")
