"""Which case to label next: the pool's ``unlabeled`` cases ranked by how much the model doubts them.

The score of a case ``c`` (``semisupseg suggest``, the training panel's ranking, the segmentation
panel's "Load next suggested case"):

    H_c(x) = -sum_k Pbar_k(x) log(Pbar_k(x) + 1e-6)        (Monte-Carlo predictive entropy)
    score(c) = (1 / |R_c|) sum_{x in R_c} H_c(x)            (nats, in [0, ln K]; ln 2 = 0.693 for 2 classes)

where ``Pbar`` is the mean softmax of T noisy Monte-Carlo dropout passes (seed 000's uncertainty: the
``mc-dropout`` estimator of :func:`SemiSupSegLib.inference.segment`, which computes it; it is not
re-implemented here) and ``R_c`` is the region the model looks at: the coarse-to-fine region around the
case's stored centre (the region :func:`~SemiSupSegLib.inference.segment` predicts), or the whole volume
when the case has no centre. Higher means more doubt, so more to learn from a label; ties keep the
file's order.

Two-network models (``dual-unet``): ``H_c`` is replaced by the networks' disagreement, inference's
``disagreement`` estimator (the total-variation distance ``0.5 sum_k |P_a,k - P_b,k|`` between their
softmax, in [0, 1]), averaged over ``R_c`` the same way (:func:`measure_for`). Scores of two
measures are not comparable; one ranking uses one model, so one measure, named in every suggestion.

[decision] The mean over the region, not the sum: a case is not worth more because its volume is
larger. A whole-volume score and a regional one average over different regions, so they are only
roughly comparable (on one pool of 64^3 phantoms, where the region covers most of the volume, the case
without a centre ranked first).

With the entropy, each suggestion also carries the fraction of the predicted instrument that is
uncertain (:func:`uncertain_fraction`: entropy above :data:`UNCERTAIN_ENTROPY`, the binary entropy at
p = 0.8), the summary the segmentation panel shows under its uncertainty overlay; with the disagreement
it is None (that threshold is an entropy). So is ``doubt_share`` (:func:`doubt_share`): of what the model
claims or doubts in the region, the share it doubts; near 1 the model probably missed the instrument
(on phantoms it ranks cases by Dice where the mean entropy does not; docs/BENCHMARKS.md).

Arrays are ``[z, y, x]``; points are LPS mm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dataset import Case, Dataset
from .errors import DatasetError, InputError

ENTROPY_MEASURE = "mc-dropout"  # inference's estimator names
DISAGREEMENT_MEASURE = "disagreement"
MC_SAMPLES = 8
# Binary entropy at p = 0.8 (0.500 nats): a voxel is "uncertain" when neither class reaches 0.8.
UNCERTAIN_PROBABILITY = 0.8
UNCERTAIN_ENTROPY = -(
    UNCERTAIN_PROBABILITY * math.log(UNCERTAIN_PROBABILITY)
    + (1 - UNCERTAIN_PROBABILITY) * math.log(1 - UNCERTAIN_PROBABILITY)
)

CaseProgress = Callable[[int, int, str], None]


@dataclass
class CaseDoubt:
    """What the score of one case is computed from, on the case's own grid (``[z, y, x]`` arrays).

    Attributes:
        uncertainty: the MC predictive entropy per voxel (nats).
        region: where the model looked (True inside the region, everywhere without a centre).
        label: the predicted instrument (True = instrument).
    """

    uncertainty: np.ndarray
    region: np.ndarray
    label: np.ndarray
    measure: str = ENTROPY_MEASURE


@dataclass
class Suggestion:
    """One ranked case: ``case`` name, ``image`` path, ``score`` (mean entropy, nats) and how it was got."""

    case: str
    image: str
    score: float
    region: str  # "centre" or "whole volume"
    center: list[float] | None
    uncertain_fraction: float | None
    measure: str = ENTROPY_MEASURE
    doubt_share: float | None = None  # :func:`doubt_share`; near 1: the model probably missed (issue 20)

    def as_dict(self) -> dict:
        """The JSON object ``semisupseg suggest --json`` prints."""
        return asdict(self)


# --------------------------------------------------------------------------- uncertainty measures


def region_score(uncertainty: np.ndarray, region: np.ndarray) -> float:
    """The mean entropy over the region's voxels (the score above); 0 for an empty region.

    Args:
        uncertainty: entropy per voxel.
        region: boolean mask of the same shape.

    Returns:
        The mean, in the entropy's unit (nats).
    """
    inside = np.asarray(uncertainty, dtype=np.float64)[np.asarray(region, dtype=bool)]
    return float(inside.mean()) if inside.size else 0.0


def doubt_share(
    uncertainty: np.ndarray, prediction: np.ndarray, region: np.ndarray, threshold: float = UNCERTAIN_ENTROPY
) -> float:
    """Of what the model claims or doubts in the region, the share it doubts (a case score, issue 20).

        share(c) = |U ∩ R| / |(U ∪ P) ∩ R|,   U = {x : H(x) > threshold},  P = predicted instrument

    and 1 when both are empty. The mean entropy (:func:`region_score`) ranks cases by Dice the wrong way
    round on our phantoms: the worst cases are confident misses, little instrument and little entropy.
    This share is 1 for a confident miss (nothing claimed, nothing or only doubt), near 0 for a confident
    hit, in between for a partly doubted instrument. It uses the product's premise that the region is
    centred on an instrument, so finding nothing there is a failure, not a certainty. A candidate:
    ``benchmarks/uncertainty.py`` measures its Spearman correlation with Dice beside the mean entropy's.

    Args:
        uncertainty: entropy per voxel (nats).
        prediction: the predicted instrument mask (non-zero = instrument), same shape.
        region: boolean mask of the region the model looked at, same shape.
        threshold: the entropy above which a voxel is doubted.

    Returns:
        A share in [0, 1].
    """
    inside = np.asarray(region, dtype=bool)
    doubted = (np.asarray(uncertainty) > threshold) & inside
    claimed = (np.asarray(prediction) > 0) & inside
    either = int((doubted | claimed).sum())
    return float(doubted.sum() / either) if either else 1.0


def uncertain_fraction(
    uncertainty: np.ndarray, instrument: np.ndarray, threshold: float = UNCERTAIN_ENTROPY
) -> float | None:
    """The fraction of the instrument's voxels whose entropy is above ``threshold``.

    Args:
        uncertainty: entropy per voxel (nats).
        instrument: the instrument mask (non-zero = instrument), same shape.
        threshold: the entropy above which a voxel counts as uncertain.

    Returns:
        A fraction in [0, 1], or None when there is no instrument voxel.
    """
    inside = np.asarray(instrument) > 0
    count = int(inside.sum())
    if count == 0:
        return None
    return float((np.asarray(uncertainty)[inside] > threshold).sum() / count)


def uncertainty_summary(uncertainty: np.ndarray, instrument: np.ndarray) -> str:
    """One line saying how much of the instrument is uncertain (the panel's overlay summary)."""
    fraction = uncertain_fraction(uncertainty, instrument)
    if fraction is None:
        return "No instrument voxel: nothing to say about its uncertainty."
    count = int((np.asarray(instrument) > 0).sum())
    return (
        f"{100 * fraction:.1f} % of the instrument ({round(fraction * count)} of {count} voxels) is "
        f"uncertain (entropy > {UNCERTAIN_ENTROPY:.2f} nats: no class above {UNCERTAIN_PROBABILITY:g})."
    )


# --------------------------------------------------------------------------- one case with a model


def measure_for(model) -> str:
    """The doubt measured for ``model``: the networks' disagreement for two or more inference networks,
    else the Monte-Carlo dropout entropy (inference's estimator names)."""
    return DISAGREEMENT_MEASURE if len(model.inference_networks) >= 2 else ENTROPY_MEASURE


def region_mask(model, image: sitk.Image, center: Sequence[float] | None, roi_patches: int = 2) -> np.ndarray:
    """Where :func:`~SemiSupSegLib.inference.segment` predicts, as a ``[z, y, x]`` mask on ``image``.

    The coarse-to-fine region (:func:`~SemiSupSegLib.inference.roi_grid` of
    :func:`~SemiSupSegLib.inference.region_size`) mapped onto the input grid, or the whole volume
    without a centre.

    Args:
        model: a loaded model (its patch size and target spacing place the region).
        image: the input volume.
        center: LPS mm, or None.
        roi_patches: patches per axis, as given to ``segment``.

    Returns:
        A boolean array of the image's shape.
    """
    from .inference import region_size, roi_grid, to_input_grid

    shape = sitk.GetArrayViewFromImage(image).shape
    if center is None:
        return np.ones(shape, dtype=bool)
    spacing = model.preprocessing.target_spacing or tuple(image.GetSpacing())
    grid = roi_grid(image, center, spacing, region_size(image, spacing, model.patch_size, roi_patches))
    ones = np.ones(sitk.GetArrayViewFromImage(grid).shape, dtype=np.float32)
    return sitk.GetArrayFromImage(to_input_grid(ones, grid, image)) > 0.5


def measure_case(
    model, case: Case, mc_samples: int = MC_SAMPLES, precision: str = "auto", seed: int = 0
) -> CaseDoubt:
    """Segment one case with Monte-Carlo uncertainty and return what its score is computed from.

    The measure is :func:`measure_for`'s; the Monte-Carlo passes draw from torch's generator seeded
    with ``seed`` (inference's ``uncertainty_seed``), so a ranking is reproducible.

    Args:
        model: a loaded model.
        case: an unlabelled case (its ``center`` is used when it has one).
        mc_samples: Monte-Carlo passes (T) of the entropy.
        precision: ``auto``, ``fp32`` or ``bf16``.
        seed: the seed of the passes.

    Returns:
        The case's :class:`CaseDoubt`.
    """
    from .imageio import read_image
    from .inference import segment

    measure = measure_for(model)
    image = read_image(case.image, what=f"unlabelled case '{case.name}'")
    try:
        result = segment(
            model,
            image,
            case.center,
            mc_samples=mc_samples if measure == ENTROPY_MEASURE else 0,
            precision=precision,
            uncertainty_method=measure,
            uncertainty_seed=seed,
        )
    except InputError as exc:  # e.g. a stored centre outside its volume: say which case
        raise InputError(f"unlabelled case '{case.name}': {exc}") from None
    return CaseDoubt(
        uncertainty=sitk.GetArrayFromImage(result.uncertainty),
        region=region_mask(model, image, case.center),
        label=sitk.GetArrayViewFromImage(result.label) > 0,
        measure=measure,
    )


# --------------------------------------------------------------------------- ranking


def unlabeled_cases(dataset: Dataset) -> list[Case]:
    """The dataset's ``unlabeled`` cases, or a :class:`DatasetError` saying there are none."""
    if not dataset.unlabeled:
        raise DatasetError(f"dataset '{dataset.path}' has no 'unlabeled' cases to rank")
    return list(dataset.unlabeled)


def rank_cases(
    cases: Sequence[Case], measure: Callable[[Case], CaseDoubt], progress: CaseProgress | None = None
) -> list[Suggestion]:
    """Score every case with ``measure`` and sort them, most doubted first (stable for ties).

    Args:
        cases: the cases to rank.
        measure: ``case -> CaseDoubt`` (:func:`measure_case` with a model; tests inject maps).
        progress: called as ``progress(done, total, case name)`` after each case.

    Returns:
        The suggestions, best first.
    """
    suggestions = []
    for index, case in enumerate(cases):
        doubt = measure(case)
        entropy_based = doubt.measure == ENTROPY_MEASURE
        share = uncertain_fraction(doubt.uncertainty, doubt.label) if entropy_based else None
        missed = doubt_share(doubt.uncertainty, doubt.label, doubt.region) if entropy_based else None
        suggestions.append(
            Suggestion(
                case=case.name,
                image=str(Path(case.image)),
                score=region_score(doubt.uncertainty, doubt.region),
                region="centre" if case.center is not None else "whole volume",
                center=None if case.center is None else [float(c) for c in case.center],
                uncertain_fraction=share,
                measure=doubt.measure,
                doubt_share=missed,
            )
        )
        if progress is not None:
            progress(index + 1, len(cases), case.name)
    return sorted(suggestions, key=lambda s: -s.score)


def suggest(
    model,
    dataset: Dataset,
    *,
    top: int | None = None,
    mc_samples: int = MC_SAMPLES,
    precision: str = "auto",
    seed: int = 0,
    progress: CaseProgress | None = None,
) -> list[Suggestion]:
    """Rank the dataset's unlabelled cases by the model's doubt (the score in the module docstring).

    Args:
        model: a loaded model.
        dataset: the pool (its ``unlabeled`` section is ranked).
        top: keep only the first ``top`` suggestions (None: all).
        mc_samples: Monte-Carlo passes per case.
        precision: ``auto``, ``fp32`` or ``bf16``.
        seed: the seed of the passes (the same for every case).
        progress: called after each case, as in :func:`rank_cases`.

    Returns:
        The suggestions, best first.

    Raises:
        DatasetError: no unlabelled case. InputError: an unreadable image or a centre outside it (naming
        the case).
    """
    cases = unlabeled_cases(dataset)
    ranking = rank_cases(cases, lambda case: measure_case(model, case, mc_samples, precision, seed), progress)
    return ranking[:top] if top is not None else ranking


def suggestion_lines(ranking: Sequence[Suggestion]) -> list[str]:
    """The ranking as the human output of ``semisupseg suggest`` (one line per case)."""
    lines = []
    for rank, s in enumerate(ranking, start=1):
        share = "" if s.uncertain_fraction is None else f", {100 * s.uncertain_fraction:.1f} % uncertain"
        lines.append(f"{rank:>3}. {s.case:<28} score {s.score:.4f} ({s.region}{share})  {s.image}")
    return lines
