""""Load next suggested case": load the most doubted unlabelled case and its stored centre, then segment it.

The ranking is ``semisupseg suggest``'s (:mod:`SemiSupSegLib.suggest`): given (e.g. the training panel's
last ranking, a list of ``{"case", "image", ...}`` objects) or computed here in this process with the
chosen model. A ranked case that is no longer in the pool's ``unlabeled`` section (labelled since) is
skipped, so a stale ranking never brings back a case already done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from SemiSupSegLib.dataset import Case, load_dataset
from SemiSupSegLib.errors import InputError

from .markups import set_center_lps
from .volumes import volume_from_image


def _ranked_names(ranking: Sequence) -> list[str]:
    return [r["case"] if isinstance(r, dict) else r.case for r in ranking]


def rank_pool(logic, pool_json, model_path: str, device_choice: str = "Auto", progress=None) -> list:
    """The pool's unlabelled cases ranked in this process (``semisupseg suggest``'s score).

    Args:
        logic: a :class:`~SemiSupSegMRML.segmentation.SegmentationLogic` (its loaded model is reused).
        pool_json: the pool's ``dataset.json``.
        model_path: the model folder.
        device_choice: "Auto", "GPU" or "CPU".
        progress: ``progress(done, total, case)`` after each case.

    Returns:
        The engine's suggestions, best first.
    """
    from SemiSupSegLib.suggest import suggest

    model = logic.loaded_model(model_path, device_choice)
    return suggest(model, load_dataset(pool_json, check_images=False), progress=progress)


def next_suggested_case(pool_json, ranking: Sequence) -> Case:
    """The first ranked case still in the pool's ``unlabeled`` section.

    Raises:
        InputError: no ranked case is unlabelled any more.
    """
    unlabeled = {case.name: case for case in load_dataset(pool_json, check_images=False).unlabeled}
    for name in _ranked_names(ranking):
        if name in unlabeled:
            return unlabeled[name]
    raise InputError(f"no suggested case is still unlabelled in '{pool_json}'; rank the pool again")


def load_case(case: Case, point_node):
    """Load a pool case as a new volume node; its stored centre becomes the point list's only point (a
    case without a centre empties the list: the whole volume is segmented).

    Returns:
        The new volume node, named after the case.
    """
    from SemiSupSegLib.imageio import read_image

    volume = volume_from_image(read_image(case.image, what=f"case '{case.name}'"), case.name)
    if case.center is not None:
        set_center_lps(point_node, volume, case.center)
    elif point_node is not None:
        point_node.RemoveAllControlPoints()
    return volume


def load_next_suggested(
    logic,
    pool_json,
    model_path: str,
    point_node,
    device_choice: str = "Auto",
    *,
    ranking: Sequence | None = None,
    progress: Callable | None = None,
    segmentation_node=None,
) -> dict:
    """Load the top unlabelled case with its stored centre and segment it.

    Args:
        logic: a :class:`~SemiSupSegMRML.segmentation.SegmentationLogic`.
        pool_json: the pool's ``dataset.json``.
        model_path: the model that segments (and ranks, without ``ranking``).
        point_node: the centre point list (set to the case's centre).
        device_choice: "Auto", "GPU" or "CPU".
        ranking: a ranking to follow (None: :func:`rank_pool` now).
        progress: passed to :func:`rank_pool`.
        segmentation_node: the segmentation to update (None: a new one).

    Returns:
        ``{"case", "volume", "ranking", "segmentation", "execution", "summary", ...}``.
    """
    if ranking is None:
        ranking = rank_pool(logic, pool_json, model_path, device_choice, progress)
    case = next_suggested_case(pool_json, ranking)
    volume = load_case(case, point_node)
    nodes = logic.segment(volume, point_node, model_path, device_choice, segmentation_node=segmentation_node)
    return {"case": case, "volume": volume, "ranking": list(ranking), **nodes}
