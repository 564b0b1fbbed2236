"""``semisupseg segment``: one volume, with the panels' background protocol (``--progress json``)."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .arguments import _COUNT, _THRESHOLD, _device, _image_output, _triple
from .locator import _locate_for_segmentation


def _read_centers(args: argparse.Namespace) -> list | None:
    """The ``--center`` points in LPS (converted from RAS with ``--ras``), or None without any."""
    if not args.center:
        return None
    from ..imageio import ras_to_lps

    return [ras_to_lps(point) if args.ras else point for point in args.center]


def cmd_segment(args: argparse.Namespace) -> int:
    """``semisupseg segment``; with ``--progress json`` the panels' background segmentation: the
    protocol's ``started``, ``progress`` (``stage``, ``fraction``) and ``finished`` (``seconds``,
    ``mode``, ``precision``, ``device``, ``outputs``: name -> file written) events on stdout."""
    from ..imageio import read_image, write_image
    from ..model_store import load_model
    from ..training import resolve_device

    reporter = args.reporter if args.progress == "json" else None
    _check_outputs(args)
    _check_uncertainty_options(args)
    if args.center and args.locator:  # the locator was silently left unused
        raise InputError(
            "--center and --locator exclude each other: give a centre, or let the locator find it"
        )
    device = resolve_device(args.device)
    centers = _read_centers(args)
    if reporter:
        mode = "roi" if centers is not None or args.locator else "sliding-window"
        summary = {"model": str(args.model), "device": str(device), "mode": mode}
        reporter.emit("started", task="segmentation", summary=summary)
        reporter.emit("progress", stage="load model", fraction=0.0)
    model = load_model(args.model, device)
    image = read_image(args.input)
    if centers is None and args.locator:
        centers = [_locate_for_segmentation(args.locator, image, device)]
    result = _segment_reporting(args, model, image, centers, str(device), reporter)
    outputs = {"label": args.output, "probability": args.probability, "uncertainty": args.uncertainty}
    outputs = {name: path for name, path in outputs.items() if path}
    write_image(result.label, args.output)
    if args.probability:
        write_image(result.probability, args.probability)
    if args.uncertainty:
        write_image(result.uncertainty, args.uncertainty)
    message = f"segmented {args.input} in {result.seconds:.2f} s ({result.mode}); wrote {args.output}"
    if reporter:
        reporter.emit(
            "finished",
            seconds=result.seconds,
            mode=result.mode,
            precision=result.precision,
            device=str(device),
            outputs=outputs,
            message=message,
        )
    else:
        print(message)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse outputs that would overwrite the input volume, a model file or one another."""
    from ..atomic import check_outputs_spare_inputs

    outputs = {"--output": args.output, "--probability": args.probability, "--uncertainty": args.uncertainty}
    check_outputs_spare_inputs({k: v for k, v in outputs.items() if v}, {"input image (--input)": args.input})


def _check_uncertainty_options(args: argparse.Namespace) -> None:
    """Refuse ``--uncertainty-method``/``--mc-samples`` without ``--uncertainty`` (they were silently ignored)
    and an unknown estimator, before the model is loaded."""
    from ..inference import UNCERTAINTY_METHODS

    given = [flag for flag, value in (("--uncertainty-method", args.uncertainty_method),
                                      ("--mc-samples", args.mc_samples)) if value is not None]  # fmt: skip
    if given and not args.uncertainty:
        raise InputError(f"{' and '.join(given)} shape the uncertainty map: give --uncertainty FILE too")
    if args.uncertainty_method is not None and args.uncertainty_method not in UNCERTAINTY_METHODS:
        raise InputError(
            f"uncertainty method {args.uncertainty_method!r} is not one of {', '.join(UNCERTAINTY_METHODS)}"
        )


def _segment_reporting(args: argparse.Namespace, model, image, centers, device: str, reporter):
    """:func:`~.inference.segment` with its stages sent to ``reporter`` (when given); running out of
    memory becomes one line of advice (:func:`~.slicer_bridge.user_message`)."""
    from ..inference import segment
    from ..slicer_bridge import is_out_of_memory, user_message

    def progress(stage: str, fraction: float) -> None:
        reporter.emit("progress", stage=stage, fraction=float(fraction))

    try:
        return segment(
            model,
            image,
            centers=centers,
            mc_samples=(args.mc_samples or 0) if args.uncertainty else 0,
            uncertainty_method=_uncertainty_method(args),
            precision=args.precision,
            threshold=args.threshold,
            progress=progress if reporter else None,
        )
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise InputError(user_message(exc, device)) from exc


def _uncertainty_method(args: argparse.Namespace) -> str | None:
    """The estimator for ``--uncertainty`` (its default when unnamed); None without ``--uncertainty``."""
    if not args.uncertainty:
        return None
    if args.uncertainty_method is None:
        from ..inference import DEFAULT_UNCERTAINTY

        return DEFAULT_UNCERTAINTY
    return args.uncertainty_method


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment the instrument in one volume")
    p.add_argument("--model", required=True, help="model folder or name")
    p.add_argument("--input", required=True)
    p.add_argument(
        "--output",
        required=True,
        type=_image_output,
        help="label file to write (.nrrd, .nii.gz, .mha): 0/1, or the classes 0..K-1 of a multi-class model",
    )
    p.add_argument(
        "--center",
        type=_triple(float, "x,y,z"),
        action="append",
        help="instrument centre x,y,z in LPS mm; repeat it for several points (the regions' probabilities "
        "are merged by their maximum)",
    )
    p.add_argument("--ras", action="store_true", help="--center is in RAS (Slicer) instead of LPS")
    p.add_argument("--locator", help="without --center: find the centre with this DQN locator first")
    p.add_argument(
        "--probability",
        type=_image_output,
        help="also write the foreground probability (multi-class models: 1 - P(background))",
    )
    p.add_argument(
        "--uncertainty", type=_image_output, help="also write an uncertainty map (see --uncertainty-method)"
    )
    p.add_argument(
        "--uncertainty-method",
        help="estimator for --uncertainty: mc-dropout (T full Monte-Carlo dropout passes, as before "
        "issue 20), decoder-mc, last-block-mc, flips, entropy, disagreement (two-network models); "
        "default: the one "
        "measured best (inference.DEFAULT_UNCERTAINTY, see docs/BENCHMARKS.md)",
    )
    p.add_argument(
        "--mc-samples", type=_COUNT, default=None, help="passes of the estimator (default: its own, 8 for MC)"
    )
    p.add_argument(
        "--threshold",
        type=_THRESHOLD,
        default=0.5,
        help="label = probability > threshold (default 0.5); multi-class models take the most probable class",
    )
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument(
        "--progress", choices=("human", "json", "none"), default="human", help="json: protocol events"
    )
    p.set_defaults(func=cmd_segment)
