#!/usr/bin/env python
"""The main job in one command: train the VAE, train the latent diffusion model, evaluate.

    python main.py --config config.yaml --mode both
    python main.py --config config.yaml --mode evaluate --checkpoint outputs/demo/ldm

The YAML has one section per step; each section's keys are the flags of that step's script, parsed by
the script's own parser (so a misspelt key is an error, exactly as with ``train_vae.py --config``)::

    output_dir: outputs/demo     # vae/, ldm/ and eval/ are written inside
    data: {...}                  # data flags shared by both training scripts (data_path, split, ...)
    vae: {...}                   # train_vae.py flags
    ldm: {...}                   # train_ldm.py flags
    evaluate: {...}              # flags of the evaluation (see `python main.py --help`)

Multi-GPU: ``accelerate launch main.py --config config.yaml --mode train`` runs both training steps on
every process; the evaluation runs on the main process.
"""

import argparse
import logging
import sys
from pathlib import Path

import yaml
from accelerate.state import AcceleratorState

import train_ldm
import train_vae
from fmri_diffusers.config import settings_to_argv
from fmri_diffusers.evaluation import evaluate_pipeline, print_summary
from fmri_diffusers.schedulers import SCHEDULERS

SECTIONS = ("output_dir", "data", "vae", "ldm", "evaluate")


def evaluation_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py evaluate section", allow_abbrev=False)
    parser.add_argument("--num_samples", type=int, default=None,
                        help="Samples to generate (default: as many as the training split, at least 100).")
    parser.add_argument("--num_inference_steps", type=int, default=10,
                        help="Denoising steps when sampling for the evaluation.")
    parser.add_argument("--scheduler", type=str, default="dpmsolver++", choices=list(SCHEDULERS),
                        help="Sampler swapped in for evaluation (built from the pipeline's scheduler config).")
    parser.add_argument("--guidance_scale", type=float, default=1.0,
                        help="Classifier-free guidance weight for a conditional model (1 = none).")
    parser.add_argument("--n_pca", type=int, default=20, help="PCA components for FD, MMD, C2ST, precision/recall.")
    parser.add_argument("--n_boot", type=int, default=200, help="Bootstrap draws for confidence intervals.")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of initialisation, batches and noise (each rank gets seed + rank).")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", type=str, required=True, help="YAML with the sections above.")
    parser.add_argument("--mode", type=str, default="both", choices=["train", "evaluate", "both"])
    parser.add_argument("--checkpoint", type=str, default=None,
                        help="Pipeline folder to evaluate (default: <output_dir>/ldm).")
    parser.add_argument("--output_dir", type=str, default=None, help="Overrides the YAML's output_dir.")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="Retrain into folders that hold an earlier run (passed to both training scripts).")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def load_sections(path: str) -> dict:
    """The YAML's sections, checked: unknown sections are errors, each section a mapping."""
    settings = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a mapping with sections {SECTIONS}")
    unknown = sorted(set(settings) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; expected {list(SECTIONS)}")
    for name in ("data", "vae", "ldm", "evaluate"):
        if not isinstance(settings.setdefault(name, {}) or {}, dict):
            raise ValueError(f"{path}: section {name!r} must be a mapping of flag names to values")
        settings[name] = settings[name] or {}
    return settings


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if not Path(args.config).is_file():
        raise ValueError(f"--config {args.config}: file not found")
    settings = load_sections(args.config)
    out = Path(args.output_dir or settings.get("output_dir") or "outputs/main")
    vae_dir, ldm_dir, eval_dir = out / "vae", out / "ldm", out / "eval"
    overwrite = ["--overwrite_output_dir"] if args.overwrite_output_dir else []
    where = f"{args.config}"

    # Every section is parsed up front, so a typo anywhere fails before any training starts.
    vae_argv = settings_to_argv(train_vae.build_parser(), {**settings["data"], **settings["vae"]}, f"{where} [vae]")
    ldm_argv = settings_to_argv(train_ldm.build_parser(), settings["ldm"], f"{where} [ldm]")
    eval_parser = evaluation_parser()
    eval_args = eval_parser.parse_args(settings_to_argv(eval_parser, settings["evaluate"], f"{where} [evaluate]"))

    if args.mode in ("train", "both"):
        # 1. the VAE
        train_vae.main(train_vae.parse_args(vae_argv + ["--output_dir", str(vae_dir), *overwrite]))
        # accelerate keeps one process-wide state; the LDM section may ask for another mixed precision.
        AcceleratorState._reset_state()
        # 2. the LDM on the VAE's latents (its data settings come from the VAE run)
        train_ldm.main(train_ldm.parse_args(
            ldm_argv + ["--pretrained_vae_model_name_or_path", str(vae_dir), "--output_dir", str(ldm_dir), *overwrite]
        ))

    results = {}
    if args.mode in ("evaluate", "both"):
        from accelerate import PartialState

        if PartialState().is_main_process:
            # 3. evaluation: sample, score beside baselines and the ceiling, write report and samples
            pipeline_dir = Path(args.checkpoint) if args.checkpoint else ldm_dir
            from fmri_diffusers import FMRILatentDiffusionPipeline
            from fmri_diffusers.schedulers import make_scheduler

            pipe = FMRILatentDiffusionPipeline.from_pretrained(pipeline_dir)
            results = evaluate_pipeline(
                pipeline_dir, eval_dir, pipe=pipe, num_samples=eval_args.num_samples,
                num_inference_steps=eval_args.num_inference_steps,
                scheduler=make_scheduler(eval_args.scheduler, pipe.scheduler.config),
                guidance_scale=eval_args.guidance_scale, n_pca=eval_args.n_pca, n_boot=eval_args.n_boot,
                seed=eval_args.seed,
            )
            print("\n" + print_summary(results))
            print(f"\npipeline: {pipeline_dir}\nevaluation: {eval_dir}")
    return results


if __name__ == "__main__":
    try:
        main(parse_args())
    except ValueError as err:  # user errors: one clear line, no traceback
        sys.exit(f"error: {err}")
