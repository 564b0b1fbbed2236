"""Scripted mutation testing: plant realistic one-line bugs in the engine, one at a time, and run the tests.

A mutation is a (file, exact old text, new text) triple; the old text must occur exactly once in the
file, so a mutation that no longer applies fails loudly instead of silently testing nothing. Every
mutation runs in a private copy of the committed tree, HEAD (``--worktree``: the checkout with its
uncommitted changes); ``PYTHONPATH`` points the tests and their child processes at the copy's engine,
so the checkout itself is never modified.

We script the mutations rather than run ``mutmut``/``cosmic-ray``: their operators (``<`` to ``<=``,
``+ 1`` to ``+ 2``...) produce mostly equivalent or trivially-crashing mutants in numeric tensor code,
and a full run over the engine takes hours on 2 cores. These mutations are the bugs an engineer writes:
a flipped sign, a forgotten ``load_state_dict``, ``x, y, z`` for ``z, y, x``, an unclamped far edge.

Usage::

    python tools/mutate.py                      # every mutation, writes docs/mutation_results.json
    python tools/mutate.py --only mt-consistency-sign --only ua-mt-uncertainty-from-student
    python tools/mutate.py --list

A mutation is *caught* when its tests fail (or exceed the time limit); *survived* when they pass.
The score and the survivors go in docs/TESTING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIB = "SemiSupSeg/SemiSupSegLib"
RESULTS = REPO / "docs" / "mutation_results.json"
TESTING_DOC = REPO / "docs" / "TESTING.md"


@dataclass(frozen=True)
class Mutation:
    """One planted bug: ``old`` (exactly once in ``file``) becomes ``new``; ``tests`` are pytest targets."""

    name: str
    kind: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


T = "Testing/"
RESUME_TESTS = (T + "test_resume_determinism.py",)
LOSS_TESTS = (T + "test_loss_composition.py", T + "test_methods_ssl.py")
GEOMETRY_TESTS = (T + "test_geometry_axes.py", T + "test_region_blending.py", T + "test_inference.py")
LOCATOR_TESTS = (T + "test_geometry_axes.py", T + "test_locator.py")
RECOGNITION_TESTS = (T + "test_locator_recognition.py",)
SEGMENTATION_LOCATOR_TESTS = (T + "test_locator_segmentation.py",)
PICKLE_TESTS = (T + "test_unsafe_pickle.py",)
SSL_TESTS = LOSS_TESTS + (T + "test_ssl_fidelity.py",)


def _m(name: str, kind: str, file: str, old: str, new: str, tests: tuple[str, ...]) -> Mutation:
    return Mutation(name, kind, f"{LIB}/{file}", old, new, tests)


MUTATIONS: list[Mutation] = [
    # --- resume -----------------------------------------------------------------------------------
    _m("resume-no-weights", "resume", "training.py",
       'method.load_state_dict(state["method"])', 'state["method"]', RESUME_TESTS),
    _m("resume-no-optimizer", "resume", "training.py",
       'optimizer.load_state_dict(state["optimizers"][spec.stage])', 'state["optimizers"][spec.stage]',
       RESUME_TESTS),
    _m("resume-no-scheduler", "resume", "training.py",
       'scheduler.load_state_dict(state["schedulers"][spec.stage])', 'state["schedulers"][spec.stage]',
       RESUME_TESTS),
    # --- how the losses combine -------------------------------------------------------------------
    _m("mt-consistency-sign", "losses", "methods/mean_teacher.py",
       '"loss": sup + weight * cons', '"loss": sup - weight * cons', LOSS_TESTS),
    _m("mt-target-from-student", "losses", "methods/mean_teacher.py",
       "self.teacher(input_noise(x))", "self.student(input_noise(x))", LOSS_TESTS),
    _m("mt-target-without-noise", "losses", "methods/mean_teacher.py",
       "self.teacher(input_noise(x))", "self.teacher(x)", LOSS_TESTS),
    _m("ua-mt-uncertainty-from-student", "losses", "methods/ua_mt.py",
       "mc_prediction(self.teacher, x_u,", "mc_prediction(self.student, x_u,", LOSS_TESTS),
    _m("ua-mt-mask-inverted", "losses", "methods/ua_mt.py",
       "mask = uncertainty < self.threshold(step)", "mask = uncertainty > self.threshold(step)", LOSS_TESTS),
    _m("du-lcont-sign", "losses", "methods/dual_unet.py",
       "return -classifier_bce(d_l, d_u)", "return classifier_bce(d_l, d_u)", LOSS_TESTS),
    _m("du-intra-weight-zero", "losses", "methods/dual_unet.py",
       'factor = {"sup": 1.0, "intra": w["alpha"], "inter": w["alpha"]}',
       'factor = {"sup": 1.0, "intra": 0.0, "inter": w["alpha"]}', LOSS_TESTS),
    _m("du-ncont-weight-beta", "losses", "methods/dual_unet.py",
       'factor.update(lcont=w["beta"], ncont=w["gamma"])', 'factor.update(lcont=w["beta"], ncont=w["beta"])',
       LOSS_TESTS),
    _m("du-intra-mask-inverted", "losses", "methods/dual_unet.py",
       "masked_mean(distance(y, p_hat.detach()), u_hat < tau1)",
       "masked_mean(distance(y, p_hat.detach()), u_hat > tau1)", LOSS_TESTS),
    _m("mc-passes-pooled-batchnorm", "losses", "methods/common.py",
       "bn.forward = lambda x, bn=bn: grouped_batch_norm(bn, x, groups)",
       "bn.forward = lambda x, bn=bn: grouped_batch_norm(bn, x, 1)", SSL_TESTS),
    _m("ncont-code-unbounded", "losses", "methods/dual_unet.py",
       "return torch.tanh(self.norm(z.float())) / math.sqrt(self.code_size)",
       "return self.norm(z.float()) / math.sqrt(self.code_size)", SSL_TESTS),
    _m("ema-decay-swapped", "losses", "methods/common.py",
       "p_t.mul_(decay).add_(p_s.detach(), alpha=1.0 - decay)",
       "p_t.mul_(1.0 - decay).add_(p_s.detach(), alpha=decay)", LOSS_TESTS),
    _m("ema-warmup-max", "losses", "methods/common.py",
       "return min(1.0 - 1.0 / (step + 1.0), float(max_decay))",
       "return max(1.0 - 1.0 / (step + 1.0), float(max_decay))", LOSS_TESTS),
    _m("ramp-linear-exponent", "losses", "losses.py",
       "-5.0 * phase * phase", "-5.0 * phase", LOSS_TESTS + (T + "test_losses_progress.py",)),
    _m("ua-consistency-without-k", "losses", "losses.py",
       "(k * mask.sum() + 1e-16)", "(mask.sum() + 1e-16)", LOSS_TESTS),
    _m("masked-mean-over-all-voxels", "losses", "losses.py",
       "return (mask * values).sum() / mask.sum().clamp_min(1.0)", "return (mask * values).mean()",
       LOSS_TESTS),
    _m("sup-ce-weight", "losses", "losses.py",
       "def supervised_loss(ce_weight: float = 0.5,", "def supervised_loss(ce_weight: float = 1.0,",
       LOSS_TESTS),
    # --- axis order and borders -----------------------------------------------------------------
    _m("roi-size-xyz", "axes", "inference.py",
       "patch_xyz = np.asarray(patch_zyx, dtype=int)[::-1]", "patch_xyz = np.asarray(patch_zyx, dtype=int)",
       GEOMETRY_TESTS),
    _m("roi-far-edge-unclamped", "axes", "inference.py",
       "start = np.clip(start, 0, np.maximum(n_target - size, 0))", "start = np.maximum(start, 0)",
       GEOMETRY_TESTS),
    _m("patch-centre-xyz", "axes", "patches.py",
       "center = np.array(xyz[::-1], dtype=float)", "center = np.array(xyz, dtype=float)",
       (T + "test_geometry_axes.py", T + "test_preprocessing_patches.py")),
    _m("locator-reward-xyz-spacing", "axes", "locator/environment.py",
       "return self.spacing[::-1].copy()", "return self.spacing.copy()", LOCATOR_TESTS),
    _m("locator-far-edge-move", "axes", "locator/environment.py",
       "refused = np.any((target < 0) | (target >= grid), axis=1)", "refused = np.any(target < 0, axis=1)",
       LOCATOR_TESTS),
    _m("locator-index-xyz", "axes", "locator/environment.py",
       "return (local / self.spacing)[::-1]", "return local / self.spacing", LOCATOR_TESTS),
    _m("region-larger-than-volume", "axes", "inference.py",
       "fitted = (np.minimum(roi_patches * patch_xyz, _target_size(image, spacing)) // 4) * 4",
       "fitted = roi_patches * patch_xyz", GEOMETRY_TESTS),
    _m("region-blend-constant", "inference", "inference.py",
       'mode="gaussian",', 'mode="constant",', GEOMETRY_TESTS),
    # --- safety ----------------------------------------------------------------------------------
    _m("model-weights-unsafe-load", "safety", "model_store.py",
       'torch.load(path, map_location="cpu", weights_only=True)',
       'torch.load(path, map_location="cpu", weights_only=False)', PICKLE_TESTS),
    _m("checkpoint-unsafe-load", "safety", "checkpoints.py",
       "torch.load(path, map_location=device, weights_only=True)",
       "torch.load(path, map_location=device, weights_only=False)", PICKLE_TESTS),
    _m("locator-weights-unsafe-load", "safety", "locator/store.py",
       'torch.load(path, map_location="cpu", weights_only=True)',
       'torch.load(path, map_location="cpu", weights_only=False)', PICKLE_TESTS),
    # --- inference, metrics, input checks ---------------------------------------------------------
    _m("foreground-is-background", "inference", "inference.py",
       "return (1.0 - probabilities[:, 0]).clamp_(0.0, 1.0)", "return probabilities[:, 0].clamp_(0.0, 1.0)",
       (T + "test_inference.py",)),
    _m("batchnorm-folded-in-place", "inference", "inference.py",
       "    folded = copy.deepcopy(net).eval()", "    folded = net.eval()", (T + "test_inference.py",)),
    _m("batchnorm-kept-after-folding", "inference", "inference.py",
       "                module._modules[second] = nn.Identity()", "                pass",
       (T + "test_inference.py",)),
    _m("entropy-log2", "inference", "inference.py",
       "torch.log(p + ENTROPY_EPS)", "torch.log2(p + ENTROPY_EPS)", (T + "test_inference.py",)),
    _m("mc-noise-unclipped", "inference", "inference.py",
       "(noise * MC_NOISE_STD).clamp_(-MC_NOISE_CLIP, MC_NOISE_CLIP)", "(noise * MC_NOISE_STD)",
       (T + "test_inference.py", T + "test_loss_composition.py")),
    _m("hd95-is-hd100", "metrics", "metrics.py",
       "torch.quantile(d.double(), 0.95)", "torch.quantile(d.double(), 1.0)", (T + "test_metrics.py",)),
    _m("both-empty-dice-zero", "metrics", "metrics.py",
       "result = _empty_case(pred.shape, spacing, both_empty=n_pred == n_ref)",
       "result = _empty_case(pred.shape, spacing, both_empty=False)", (T + "test_metrics.py",)),
    _m("zscore-without-std", "preprocessing", "preprocessing.py",
       "return ((scaled - mean) / (std if std > 1e-8 else 1.0)).astype(np.float32)",
       "return (scaled - mean).astype(np.float32)", (T + "test_preprocessing_patches.py",)),
    _m("local-zscore-without-std", "preprocessing", "preprocessing.py",
       "    x /= spread\n", "    x /= 1.0\n", (T + "test_preprocessing_patches.py",)),
    _m("local-zscore-fill-in-window", "preprocessing", "preprocessing.py",
       "weight = smooth(np.array(in_view, dtype=np.float32))",
       "weight = smooth(np.ones(np.shape(in_view), dtype=np.float32))",
       (T + "test_preprocessing_patches.py",)),
    _m("local-zscore-spacing-xyz", "axes", "inference.py",
       "self.preprocessing.normalize(array_zyx, self.statistics, self.spacing[::-1])",
       "self.preprocessing.normalize(array_zyx, self.statistics, self.spacing)", (T + "test_inference.py",)),
    _m("default-uncertainty-four-flips", "inference", "inference.py",
       'UncertaintyMethod("flips", 2, 1, _flips,', 'UncertaintyMethod("flips", 4, 1, _flips,',
       (T + "test_uncertainty.py",)),
    _m("nan-voxels-accepted", "validation", "imageio.py",
       "bad = int(array.size - np.count_nonzero(np.isfinite(array)))", "bad = 0",
       (T + "test_imageio.py", T + "test_cli.py")),
    _m("ras-lps-z-flipped", "geometry", "slicer_bridge.py",
       "_FLIP3 = np.diag([-1.0, -1.0, 1.0])", "_FLIP3 = np.diag([-1.0, 1.0, -1.0])",
       (T + "test_slicer_bridge.py",)),
    _m("stale-lock-never-stale", "reliability", "runlock.py",
       'return not pid_alive(int(info["pid"]))', "return False", (T + "test_train_process.py",)),
    _m("label-values-unchecked", "validation", "dataset.py",
       "values = np.unique(sitk.GetArrayViewFromImage(label))",
       "values = np.unique(sitk.GetArrayViewFromImage(label)).clip(0, 1)", (T + "test_dataset.py",)),
    _m("compare-better-inverted", "workflow", "model_compare.py",
       'better = summary["new"]["dice"] >= summary["current"]["dice"]',
       'better = summary["new"]["dice"] <= summary["current"]["dice"]', (T + "test_train_process.py",)),
    _m("estimate-includes-warmup", "progress", "step_estimate.py",
       "per_step = (time.perf_counter() - t0) / steps",
       "per_step = (time.perf_counter() - t0 + warmup) / steps",
       (T + "test_train_process.py",)),
    _m("test-labels-unvalidated", "validation", "dataset.py",
       'if case.label is None or case.section == "unlabeled" or not case.label.is_file():',
       'if case.label is None or case.section != "training" or not case.label.is_file():',
       (T + "test_dataset.py", T + "test_cli_bad_input.py")),
    _m("label-geometry-unchecked", "validation", "dataset.py",
       "mismatch = imageio.same_geometry(label, image)\n    if mismatch:\n        problems",
       "mismatch = None\n    if mismatch:\n        problems", (T + "test_dataset.py",)),
    _m("number-range-unchecked", "validation", "errors.py",
       "    if below or above:\n        raise problem\n", "    if False:\n        raise problem\n",
       (T + "test_cli_bad_input.py",)),
    _m("unknown-options-accepted", "validation", "methods/common.py",
       "unknown = sorted(set(options) - set(allowed))", "unknown = []", (T + "test_cli_bad_input.py",)),
    _m("resume-no-random-state", "resume", "training.py",
       'if "random" in state and not self.dist.active', 'if False and not self.dist.active', RESUME_TESTS),
    _m("pool-update-without-lock", "reliability", "dataset.py",
       "    with dataset_lock(path):  # read, change and write as one step: a concurrent writer waits",
       "    if True:", (T + "test_write_faults.py",)),
    _m("protocol-version-unchecked", "reliability", "childprocess.py",
       'if protocol_major(record["protocol"]) != PROTOCOL_MAJOR:', "if False:",
       (T + "test_fuzz_readers.py", T + "test_train_process.py", T + "test_slicer_bridge.py")),
    _m("constant-image-accepted", "validation", "imageio.py",
       "    if low == high:\n        raise InputError(f\"image is constant",
       "    if False:\n        raise InputError(f\"image is constant",
       (T + "test_bad_input_catalogue.py",)),
    _m("resume-ignores-steps", "reliability", "cli/train.py",
       'steps = fields.get("steps", stored.steps)', "steps = stored.steps", (T + "test_cli_bad_input.py",)),
    _m("cli-parsers-built-eagerly", "reliability", "cli/arguments.py",
       "        self._populate = populate\n", "        self._populate = populate\n        self.populated()\n",
       (T + "test_cli_bad_input.py",)),
    _m("model-json-after-weights", "reliability", "atomic.py",
       "            before_rename()", "            pass", (T + "test_write_faults.py",)),
    # --- progress ----------------------------------------------------------------------------------
    _m("eta-counts-done-steps", "progress", "training.py",
       "eta_seconds=rate * (cfg.steps - done)", "eta_seconds=rate * (cfg.steps - start)",
       (T + "test_progress_eta.py", T + "test_training.py")),
    _m("rate-since-step-zero", "progress", "training.py",
       "rate = (time.monotonic() - t0) / (done - start)", "rate = (time.monotonic() - t0) / done",
       (T + "test_progress_eta.py", T + "test_training.py")),
    _m("locator-eta-counts-done-steps", "progress", "locator/train.py",
       "eta_seconds=rate * (cfg.steps - done)", "eta_seconds=rate * done",
       (T + "test_progress_eta.py", T + "test_locator.py")),
    # --- locator II: recognition, refinement, confidence -----------------------------------------
    _m("recognition-channels-swapped", "locator", "locator/environment.py",
       "for k in (scale_index, coarser):", "for k in (coarser, scale_index):", RECOGNITION_TESTS),
    _m("recognition-levels-averaged", "locator", "locator/recognition.py",
       "likelihood if s <= 1 else ndimage.maximum_filter(likelihood, size=int(s), mode=\"nearest\")",
       "likelihood if s <= 1 else ndimage.uniform_filter(likelihood, size=int(s), mode=\"nearest\")",
       RECOGNITION_TESTS),
    _m("recognition-mask-flipped-alone", "locator", "locator/recognition.py",
       "image, mask = np.flip(image, axis + 1), np.flip(mask, axis)",
       "image, mask = np.flip(image, axis + 1), mask", RECOGNITION_TESTS),
    _m("refine-centroid-not-middle", "locator", "locator/recognition.py",
       "return np.average(coords[middle], axis=0, weights=weights[middle])", "return mean",
       RECOGNITION_TESTS),
    _m("refine-any-component", "locator", "locator/recognition.py",
       "if distance[nearest] > reach:", "if distance[nearest] > 10 * reach:", RECOGNITION_TESTS),
    _m("confidence-reads-one-voxel", "locator", "locator/recognition.py",
       "def point_confidence(likelihood: np.ndarray, point: Sequence[float], radius: int = 2) -> float:",
       "def point_confidence(likelihood: np.ndarray, point: Sequence[float], radius: int = 0) -> float:",
       RECOGNITION_TESTS),
    _m("resume-retrains-recognition", "locator", "locator/train.py",
       'if state is not None and "recognition" in state:', "if False:", RECOGNITION_TESTS),
    _m("old-locator-format-refused", "locator", "locator/store.py",
       'if "recognition" not in meta:\n        return None',
       'if "recognition" not in meta:\n        raise ModelError("old")',
       RECOGNITION_TESTS),
    # --- segmentation locator: the middle along the instrument -----------------------------------
    _m("segmentation-locator-centroid-not-middle", "locator", "locator/by_segmentation.py",
       "return geodesic_middle(probability_zyx, inside, spacing_zyx), _volume",
       "return _weighted_mean_index(probability_zyx, np.argwhere(inside)), _volume",
       SEGMENTATION_LOCATOR_TESTS),
    _m("segmentation-locator-spacing-xyz", "axes", "locator/by_segmentation.py",
       "found = PICKS[member.pick](probability, grid.GetSpacing()[::-1])",
       "found = PICKS[member.pick](probability, grid.GetSpacing())", SEGMENTATION_LOCATOR_TESTS),
    _m("fragments-grouped-in-voxels", "axes", "locator/by_segmentation.py",
       "points = [index[label_of == label] * np.asarray(spacing_zyx, dtype=float) for label in kept]",
       "points = [index[label_of == label] * 1.0 for label in kept]", SEGMENTATION_LOCATOR_TESTS),
    _m("fragments-not-grouped", "locator", "locator/by_segmentation.py",
       "    group = heaviest_group(probability_zyx, inside, spacing_zyx)", "    group = inside",
       SEGMENTATION_LOCATOR_TESTS),
    _m("fragments-axis-in-voxels", "axes", "locator/by_segmentation.py",
       "position = index * np.asarray(spacing_zyx, dtype=float)", "position = index * 1.0",
       SEGMENTATION_LOCATOR_TESTS),
]


def _copy_tree(dest: Path, worktree: bool) -> None:
    """Copy the committed tree (HEAD), or with ``worktree`` the checkout's tracked and untracked files."""
    if not worktree:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _head() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """Run ``tests`` in ``tree``; return ("passed" | "failed" | "timeout", seconds, last output line)."""
    env = dict(os.environ, PYTHONPATH=str(tree / "SemiSupSeg"), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, ""
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    status = "passed" if proc.returncode == 0 else "failed"
    failed = [line for line in lines if line.startswith("FAILED") or line.startswith("ERROR")]
    return status, time.monotonic() - t0, (failed[0] if failed else lines[-1] if lines else "")


def _apply(tree: Path, mutation: Mutation) -> str:
    path = tree / mutation.file
    original = path.read_text()
    count = original.count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation {mutation.name}: the old text occurs {count} times in {mutation.file}")
    path.write_text(original.replace(mutation.old, mutation.new))
    return original


def run(mutations: list[Mutation], timeout: float, worktree: bool = False) -> list[dict]:
    """Baseline (unmutated) run of every test target, then each mutation; returns one row per mutation."""
    with tempfile.TemporaryDirectory(prefix="semisupseg-mutate-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree, worktree)
        for m in mutations:  # check every mutation applies before spending minutes on tests
            (tree / m.file).write_text(_apply(tree, m))
        targets = tuple(sorted({t for m in mutations for t in m.tests}))
        status, seconds, last = _run_tests(tree, targets, timeout * 4)
        print(f"baseline: {status} in {seconds:.0f} s ({last})", flush=True)
        if status != "passed":
            raise SystemExit(f"the unmutated tests do not pass ({last}); fix them before measuring mutations")
        rows = []
        for i, m in enumerate(mutations, 1):
            original = _apply(tree, m)
            try:
                status, seconds, last = _run_tests(tree, m.tests, timeout)
            finally:
                (tree / m.file).write_text(original)
            caught = status != "passed"
            rows.append({**asdict(m), "caught": caught, "status": status, "seconds": round(seconds, 1),
                         "last_line": last})
            print(f"[{i}/{len(mutations)}] {'caught  ' if caught else 'SURVIVED'} {m.name} "
                  f"({status}, {seconds:.0f} s)", flush=True)
    return rows


def _write(rows: list[dict], path: Path, tree: str) -> None:
    caught = sum(r["caught"] for r in rows)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python tools/mutate.py",
        "tree": tree,
        "mutations": len(rows),
        "caught": caught,
        "score": round(caught / max(1, len(rows)), 3),
        "survivors": [r["name"] for r in rows if not r["caught"]],
        "rows": rows,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)
    print(f"score: {caught}/{len(rows)} caught ({100 * report['score']:.0f} %); written to {path}")


def summary_lines(report: dict) -> list[str]:
    """Markdown for docs/TESTING.md: the score, a per-kind table and the survivors, from the results JSON."""
    sys.path.insert(0, str(REPO))
    from benchmarks._report import markdown_table

    kinds: dict[str, list[dict]] = {}
    for row in report["rows"]:
        kinds.setdefault(row["kind"], []).append(row)
    table = markdown_table(
        ["kind", "mutations", "caught", "names"],
        [[k, len(rows), sum(r["caught"] for r in rows), ", ".join(f"`{r['name']}`" for r in rows)]
         for k, rows in kinds.items()],
    )
    survivors = ", ".join(f"`{name}`" for name in report["survivors"]) or "none"
    return [
        f"**{report['caught']} of {report['mutations']} mutations caught ({100 * report['score']:.0f} %)** "
        f"on {report['tree']}, {report['date']} (`{report['command']}`; raw results "
        "[mutation_results.json](mutation_results.json)). Survivors: " + survivors + ".",
        "",
        *table,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="run only this mutation (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--check", action="store_true", help="only check that every mutation still applies")
    worktree = "mutate the checkout with its uncommitted changes (default: the committed HEAD)"
    parser.add_argument("--worktree", action="store_true", help=worktree)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutation (default 300)")
    parser.add_argument("--tabulate", type=Path, help="measure nothing: render this results JSON")
    parser.add_argument("--write", type=Path, help=f"replace the marked block of a file ({TESTING_DOC.name})")
    where = f"results file (default {RESULTS}; a partial run writes only with --json)"
    parser.add_argument("--json", type=Path, default=None, help=where)
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:34s} {m.kind:12s} {m.file}")
        return 0
    if args.tabulate:
        try:
            lines = summary_lines(json.loads(args.tabulate.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {args.tabulate} is not a mutation_results JSON: {exc}", file=sys.stderr)
            return 2
        if args.write:
            from benchmarks._report import write_block

            write_block(args.write, "tools/mutate.py", "mutation_results", lines)
        print("\n".join(lines))
        return 0
    if args.check:
        stale = [m.name for m in MUTATIONS if (REPO / m.file).read_text().count(m.old) != 1]
        missing = [(m.name, t) for m in MUTATIONS for t in m.tests if not (REPO / t).exists()]
        stale += [f"{name} (test {t} missing)" for name, t in missing]
        print("\n".join(stale) or f"all {len(MUTATIONS)} mutations apply")
        return 1 if stale else 0
    known = {m.name for m in MUTATIONS}
    unknown = sorted(set(args.only) - known)
    if unknown:
        print(f"error: unknown mutation(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    tree = "working tree" if args.worktree else f"commit {_head()}"
    rows = run(chosen, args.timeout, args.worktree)
    if args.json or not args.only:
        _write(rows, args.json or RESULTS, tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
