"""`atelier train DATA --base MODEL`: train a LoRA (or DreamBooth-LoRA) on a folder or .zip of captioned images.

Every training setting is also a flag under kohya-ss sd-scripts' name, written with underscores or dashes
(``--network_dim 64`` or ``--network-dim 64``; ``--cache_latents`` alone means true). Settings are layered:
defaults < ``--preset`` < ``--config train.toml`` < flags. Ctrl-C stops after the current step and saves the
state; run the same command with ``--resume`` to continue.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import typing
from pathlib import Path
from typing import Any

from atelier.cli.common import DEFAULT_DATA_DIR
from atelier.errors import AtelierError
from atelier.training import FIELD_NAMES, FIELD_TYPES, PRESETS, TrainConfig

# kohya names that are spelled more simply here; the kohya spellings stay accepted as aliases.
_COVERED = ("pretrained_model_name_or_path", "output_dir")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _parser_for(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse ``type`` and extra keywords for a TrainConfig field's declared type."""
    alternatives = {alt for alt in typing.get_args(annotation) or (annotation,) if alt is not type(None)}
    if alternatives == {bool}:
        return _parse_bool, {"nargs": "?", "const": True, "metavar": "BOOL"}
    if alternatives == {int}:
        return int, {"metavar": "N"}
    if alternatives == {float}:
        return float, {"metavar": "X"}
    if alternatives == {int, float}:
        return _parse_number, {"metavar": "X"}
    # str, and str-or-list fields (resolution "512,768", sample_prompts as a file path).
    return str, {"metavar": "TEXT"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a LoRA on captioned images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "data", nargs="?", type=Path, help="folder or .zip of images with same-named .txt captions"
    )
    p.add_argument(
        "--base",
        "--pretrained_model_name_or_path",
        "--pretrained-model-name-or-path",
        type=Path,
        help="base model: diffusers folder or .safetensors checkpoint",
    )
    p.add_argument("--config", type=Path, help="training settings (TOML, kohya argument names)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="starting settings")
    p.add_argument(
        "--out",
        "--output_dir",
        "--output-dir",
        type=Path,
        help=f"run folder (default: {DEFAULT_DATA_DIR}/training/<output_name>)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run saved in the run folder")
    p.add_argument(
        "--rights",
        type=Path,
        metavar="TOML",
        help="the images' rights record (owner, depicts_people, [[consent]] per person shown; README, 'Training "
        "rights and consent'), written into the LoRA's metadata; default: rights.toml in DATA",
    )
    p.add_argument(
        "--caption-missing",
        nargs="?",
        const="",
        default=None,
        metavar="MODEL",
        help="before training, caption the images that have no caption with a captioning model (BLIP, "
        "Florence-2), in the run's copy of the data: the first model in MODELS_DIR/captioning/, or MODEL (a "
        "name there, or a folder); write it after DATA",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_DATA_DIR / "models",
        help="models folder, whose captioning/ holds the captioning models",
    )
    settings = p.add_argument_group("training settings (kohya names; dashes or underscores)")
    help_texts = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
    for name in FIELD_NAMES:
        if name in _COVERED:
            continue
        parse, extra = _parser_for(FIELD_TYPES[name])
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        settings.add_argument(
            *flags, dest=name, type=parse, default=argparse.SUPPRESS, help=help_texts[name], **extra
        )
    p.set_defaults(func=run, uses_models=True)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: value for name, value in vars(args).items() if name in FIELD_NAMES}


def run(args: argparse.Namespace) -> int:
    from atelier.training import load_train_config

    caption_model = _caption_model(args.caption_missing, args.models_dir)
    config = load_train_config(args.config, preset=args.preset, overrides=_overrides(args))
    data = args.data or (Path(config.train_data_dir) if config.train_data_dir else None)
    base = args.base or (
        Path(config.pretrained_model_name_or_path) if config.pretrained_model_name_or_path else None
    )
    dataset_config = Path(config.dataset_config) if config.dataset_config else None
    if base is None:
        raise AtelierError(
            "no base model: pass --base MODEL (or pretrained_model_name_or_path)", field="base"
        )
    if data is None and dataset_config is None:
        raise AtelierError("no training data: pass DATA (a folder or .zip) or --dataset-config", field="data")
    out = args.out or (
        Path(config.output_dir) if config.output_dir else DEFAULT_DATA_DIR / "training" / config.output_name
    )
    rights = _rights(args.rights, data)
    return _train(
        config,
        data=data,
        base=base,
        dataset_config=dataset_config,
        out=out,
        resume=args.resume,
        caption_model=caption_model,
        rights=rights,
    )


def _rights(path: Path | None, data: Path | None) -> Any:
    """The rights record: ``--rights FILE``, else the data's own ``rights.toml`` (checked: images that depict
    people need a consent entry); None without either."""
    from atelier.training import find_rights, read_rights

    if path is not None:
        return read_rights(path)
    found = find_rights(data) if data is not None else None
    if found is None:
        print("note: no rights record (--rights rights.toml, or rights.toml in DATA): the LoRA carries none")
    return found


def _caption_model(value: str | None, models_dir: Path) -> Path | None:
    """The folder of ``--caption-missing [MODEL]``: a path as given, else a name in models_dir/captioning/."""
    if value is None:
        return None
    if "/" in value or "\\" in value:
        folder = Path(value)
        if not folder.is_dir():
            raise AtelierError(f"captioning model folder not found: {folder}", field="caption_missing")
        return folder
    from atelier.engine import find_captioning_model

    return find_captioning_model(models_dir, value or None)


def _train(
    config: TrainConfig,
    *,
    data: Path | None,
    base: Path,
    dataset_config: Path | None,
    out: Path,
    resume: bool,
    caption_model: Path | None = None,
    rights: Any = None,
) -> int:
    from tqdm import tqdm

    from atelier.cli.common import quiet_libraries
    from atelier.training import TrainProgress, train_lora

    quiet_libraries()
    stop_requested = False

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested = True
        tqdm.write("stopping after this step and saving the state (Ctrl-C again to quit at once)")

    bar: tqdm | None = None

    def on_progress(progress: TrainProgress) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=progress.total_steps, initial=progress.step - 1, unit="step", dynamic_ncols=True)
        bar.set_description(f"epoch {progress.epoch}/{progress.total_epochs}")
        bar.set_postfix(loss=f"{progress.loss:.4f}", lr=f"{progress.lr:.2e}", refresh=False)
        bar.update(progress.step - bar.n)
        for path in progress.samples:
            tqdm.write(f"sample: {path}")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = train_lora(
            config,
            data=data,
            base_model=base,
            out_dir=out,
            dataset_config=dataset_config,
            resume=resume,
            on_progress=on_progress,
            should_stop=lambda: stop_requested,
            log=tqdm.write,
            caption_model=caption_model,
            rights=rights,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        if bar is not None:
            bar.close()
    if result.stopped:
        print(
            f"stopped at step {result.summary['progress']['steps']}; continue with the same command and --resume"
        )
        return 130
    print(f"LoRA (A1111 / ComfyUI / kohya): {result.output_file}")
    print(f"LoRA (diffusers): {result.diffusers_file}")
    for path in result.epoch_files:
        print(f"epoch LoRA: {path}")
    if caption_model is not None:
        folder = result.run_dir / "dataset"
        print(f"captions written by {caption_model.name}: {len(result.captioned)}, in {folder}")
    if rights is not None:
        print(f"rights record ({rights.source}): owner {rights.owner}, written into the LoRA's metadata")
    print(f"run folder: {result.run_dir}")
    return 0
