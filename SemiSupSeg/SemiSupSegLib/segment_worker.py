"""The Slicer panel's background segmentation process: ``python -m SemiSupSegLib.segment_worker``.

The panel runs long segmentations (full-volume mode, Monte-Carlo uncertainty on large volumes) in this
separate process so that Slicer stays responsive and Cancel can kill the work. It does what
``semisupseg segment`` does, but reports on stdout in the JSON-lines progress protocol
(``docs/PROGRESS_PROTOCOL.md``), one object per line:

* ``started``: ``task`` ``"segmentation"``, ``summary`` (model, device, mode);
* ``progress``: ``stage`` (preprocess, predict, uncertainty, map back, done) and ``fraction`` in [0, 1];
* ``finished``: ``seconds``, ``mode``, ``precision``, ``device``, ``outputs`` (name -> file written);
* ``error``: ``message`` (a user-readable sentence; never a stack trace), exit status 2 for bad input
  or a missing model, 3 for out of memory, 1 for anything unexpected.

Outputs are written atomically. The input is a file the panel wrote from the volume node; the centre
point is in the image's LPS frame.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from .errors import SemiSupSegError
from .progress import JsonLinesReporter, Reporter
from .slicer_bridge import is_out_of_memory, user_message


def _center(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--center {text!r} is not x,y,z") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--center {text!r} is not x,y,z")
    return values  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m SemiSupSegLib.segment_worker", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", required=True, help="model folder or name")
    p.add_argument("--input", required=True, help="volume file (LPS, any format SimpleITK reads)")
    p.add_argument("--output", required=True, help="label file to write")
    p.add_argument("--center", type=_center, help="instrument centre x,y,z in LPS mm (use --center=x,y,z)")
    p.add_argument("--probability", help="also write the foreground probability here")
    p.add_argument("--uncertainty", help="also write the Monte-Carlo uncertainty (entropy) here")
    p.add_argument("--mc-samples", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    return p


def run(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Segment as asked and return the ``finished`` fields. Engine errors propagate."""
    from .imageio import read_image, write_image
    from .inference import segment
    from .model_store import load_model
    from .training import resolve_device

    device = resolve_device(args.device)
    mode = "roi" if args.center is not None else "sliding-window"
    reporter.emit(
        "started",
        task="segmentation",
        summary={"model": str(args.model), "device": str(device), "mode": mode},
    )
    reporter.emit("progress", stage="load model", fraction=0.0)
    model = load_model(args.model, device)
    image = read_image(args.input)

    def progress(stage: str, fraction: float) -> None:
        reporter.emit("progress", stage=stage, fraction=float(fraction))

    result = segment(
        model,
        image,
        args.center,
        mc_samples=max(1, args.mc_samples) if args.uncertainty else 0,
        precision=args.precision,
        progress=progress,
    )
    outputs = {"label": args.output}
    write_image(result.label, args.output)
    if args.probability:
        write_image(result.probability, args.probability)
        outputs["probability"] = args.probability
    if args.uncertainty and result.uncertainty is not None:
        write_image(result.uncertainty, args.uncertainty)
        outputs["uncertainty"] = args.uncertainty
    return {
        "seconds": result.seconds,
        "mode": result.mode,
        "precision": result.precision,
        "device": str(device),
        "outputs": outputs,
    }


def main(argv: Sequence[str] | None = None, stream=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    reporter = JsonLinesReporter(stream)
    device = args.device
    try:
        finished = run(args, reporter)
    except SemiSupSegError as exc:
        reporter.emit("error", message=user_message(exc, device))
        return 2
    except KeyboardInterrupt:
        reporter.emit("cancelled", message="segmentation interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the panel shows the message, never a stack trace
        traceback.print_exc(file=sys.stderr)  # for the log only; the panel reads stdout
        reporter.emit("error", message=user_message(exc, device))
        return 3 if is_out_of_memory(exc) else 1
    reporter.emit("finished", **finished, message=f"segmented in {finished['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
