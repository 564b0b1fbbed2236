"""The DQN instrument locator: environment, agent, training, storage, bad input and the CLI.

Everything runs on tiny grids (32³, crops of 9³) so that the whole file stays well under a minute.
The learning test uses synthetic volumes with one bright blob, whose centre is the target.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SemiSupSegLib.cli import main
from SemiSupSegLib.errors import InputError, ModelError, TrainingCancelled
from SemiSupSegLib.locator import load_locator, locate, save_locator
from SemiSupSegLib.locator.agent import DQNAgent, QNetwork, QNetworkConfig, ReplayMemory, q_values
from SemiSupSegLib.locator.environment import (
    ACTIONS,
    CropSampler,
    GridVolume,
    _Agents,
    _settle,
    grid_geometry,
    is_oscillating,
    move,
    multiscale_search,
    prepare_volume,
    reward,
    scale_levels,
    start_positions,
)
from SemiSupSegLib.locator.train import LocatorTrainConfig, LocatorTrainer, all_action_outcomes
from SemiSupSegLib.progress import Reporter

GRID, CROP, SCALES = 32, 9, (3, 1)


def _blob_image(rng: np.random.Generator, size: int = GRID, spacing: float = 0.8) -> tuple[sitk.Image, tuple]:
    """Noise with one bright Gaussian blob; returns the image and the blob centre (LPS mm)."""
    centre = rng.uniform(6, size - 7, 3)  # (z, y, x) voxels
    zz, yy, xx = np.meshgrid(*[np.arange(size)] * 3, indexing="ij")
    d2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
    array = 60 + 15 * rng.standard_normal((size,) * 3) + 180 * np.exp(-d2 / (2 * 2.0**2))
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin((-5.0, 3.0, 1.0))
    return image, image.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in centre[::-1]))


def _blob_label(image: sitk.Image, centre_lps, radius_mm: float = 2.4) -> sitk.Image:
    """The blob's mask: voxels within ``radius_mm`` of its centre."""
    index = np.array(image.TransformPhysicalPointToContinuousIndex(centre_lps))[::-1]
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in image.GetSize()[::-1]], indexing="ij")
    d = np.sqrt((zz - index[0]) ** 2 + (yy - index[1]) ** 2 + (xx - index[2]) ** 2) * image.GetSpacing()[0]
    label = sitk.GetImageFromArray((d <= radius_mm).astype(np.uint8))
    label.CopyInformation(image)
    return label


def _write_blob_dataset(folder, n: int, seed: int, with_center: bool = True, labelled: int = 0):
    """``n`` blob volumes: the first ``labelled`` in ``training`` with a mask, the others ``unlabeled``."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    training, unlabeled = [], []
    for i in range(n):
        image, centre = _blob_image(rng)
        sitk.WriteImage(image, str(folder / "images" / f"blob_{i:02d}.nii.gz"))
        entry = {"image": f"images/blob_{i:02d}.nii.gz"}
        if with_center:
            entry["center"] = list(centre)
        if i < labelled:
            sitk.WriteImage(_blob_label(image, centre), str(folder / "labels" / f"blob_{i:02d}.nii.gz"))
            training.append({**entry, "label": f"labels/blob_{i:02d}.nii.gz"})
        else:
            unlabeled.append(entry)
    path = folder / "dataset.json"
    path.write_text(json.dumps({"name": "blobs", "training": training, "unlabeled": unlabeled}))
    return path


def _config(data, out, **overrides) -> LocatorTrainConfig:
    settings = dict(
        data=[str(data)],
        out=str(out),
        steps=500,  # 700 steps took 21 s; at 500 the median final distance is 0.9 voxels (random policy: 16)
        agents=8,
        batch=32,
        lr=1e-3,
        grid=GRID,
        crop=CROP,
        scales=SCALES,
        width=8,
        memory=20_000,
        warmup=200,
        target_every=100,
        episode_steps=15,
        epsilon_fraction=0.5,
        val_cases=2,
        val_every=250,
        checkpoint_every=10_000,
        device="cpu",
        seed=0,
        recognition=False,  # the DQN alone; the recognition tests below turn it on
    )
    settings.update(overrides)
    return LocatorTrainConfig(**settings)


class _Recorder(Reporter):
    def __init__(self, stop_at: int | None = None, trainer=None) -> None:
        super().__init__()
        self.events: list[tuple[str, dict]] = []
        self.stop_at, self.trainer = stop_at, trainer

    def emit(self, event: str, **fields) -> None:
        self.events.append((event, fields))
        if event == "progress" and self.stop_at and fields["step"] >= self.stop_at and self.trainer:
            self.trainer.request_stop()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tiny networks run fastest on one thread; two threads on a busy 2-core machine are 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory):
    return _write_blob_dataset(tmp_path_factory.mktemp("blobs"), n=10, seed=3)


@pytest.fixture(scope="module")
def trained(blob_data, tmp_path_factory):
    """A tiny locator trained on the blob volumes, and the events its training reported."""
    torch.manual_seed(0)
    reporter = _Recorder()
    folder = LocatorTrainer(_config(blob_data, tmp_path_factory.mktemp("loc") / "blob"), reporter).run()
    return folder, reporter.events


# ------------------------------------------------------------------------------------------ environment


def test_reward_is_the_decrease_in_physical_distance_and_refusal_costs_one():
    spacing = np.array([2.0, 1.0, 0.5])  # z, y, x mm
    target = np.array([[10, 10, 10]])
    closer, refused = move(np.array([[4, 10, 10]]), np.array([0]), np.array([3]), GRID)  # +z
    assert closer.tolist() == [[7, 10, 10]] and not refused[0]
    r = reward(np.array([[4, 10, 10]]), closer, target, spacing, refused)
    assert r[0] == pytest.approx(6.0)  # 3 voxels of 2 mm closer
    away, refused = move(np.array([[10, 10, 12]]), np.array([4]), np.array([1]), GRID)  # +x
    assert reward(np.array([[10, 10, 12]]), away, target, spacing, refused)[0] == pytest.approx(-0.5)
    stay, refused = move(np.array([[1, 5, 5]]), np.array([1]), np.array([3]), GRID)  # -z off the grid
    assert refused[0] and stay.tolist() == [[1, 5, 5]]
    assert reward(np.array([[1, 5, 5]]), stay, target, spacing, refused)[0] == -1.0


def test_the_grid_covers_the_image_extent_whatever_its_spacing_and_direction():
    image = sitk.Image([40, 30, 20], sitk.sitkFloat32)
    image.SetSpacing((0.5, 0.8, 1.2))
    image.SetOrigin((10.0, -4.0, 2.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    geometry = grid_geometry(image, GRID)
    point = (12.5, -9.0, 7.0)
    np.testing.assert_allclose(geometry.to_physical(geometry.to_index(point)), point, atol=1e-9)
    for corner in ((-0.5, -0.5, -0.5), (39.5, 29.5, 19.5)):  # voxel edges, (x, y, z)
        physical = image.TransformContinuousIndexToPhysicalPoint(corner)
        expected = [f * GRID - 0.5 for f in np.divide(np.add(corner, 0.5), image.GetSize())]
        np.testing.assert_allclose(geometry.to_index(physical)[::-1], expected, atol=1e-9)


def _ramp_volume() -> GridVolume:
    """Voxel value = 1 + its flat index, at every scale: crops show exactly which voxels they read."""
    array = 1.0 + np.arange(GRID**3, dtype=np.float32).reshape((GRID,) * 3)
    geometry = grid_geometry(sitk.Image([GRID] * 3, sitk.sitkFloat32), GRID)
    return GridVolume(geometry=geometry, levels=np.stack([array, array]))


def test_crops_use_the_scale_as_stride_and_are_zero_filled_at_the_border():
    volume = _ramp_volume()
    sampler = CropSampler([volume], SCALES, CROP)
    inner = sampler.crops(np.array([0]), np.array([[16, 15, 14]]), np.array([0]))
    assert inner.shape == (1, CROP, CROP, CROP)
    np.testing.assert_array_equal(inner[0], volume.levels[0][4:29:3, 3:28:3, 2:27:3])
    corner = sampler.crops(np.array([0, 0]), np.array([[0, 0, 0], [31, 31, 31]]), np.array([0, 1]))
    assert corner.shape == (2, CROP, CROP, CROP)
    assert np.count_nonzero(corner[0]) == 5**3  # offsets -12..12 step 3: only 0..12 is inside
    np.testing.assert_array_equal(corner[0][4:, 4:, 4:], volume.levels[0][0:13:3, 0:13:3, 0:13:3])
    assert np.all(corner[0][:4] == 0) and np.all(corner[1][5:] == 0) and np.all(corner[1][:, :, 5:] == 0)
    mirrored = sampler.crops(np.array([0]), np.array([[16, 15, 14]]), np.array([0]), np.array([[0, 1, 1]]))
    np.testing.assert_array_equal(mirrored[0], volume.levels[0][:, ::-1, ::-1][4:29:3, 3:28:3, 2:27:3])
    states = sampler.states(np.array([0]), np.array([[[0, 0, 0]] * 4]), np.array([1]))
    assert states.shape == (1, 4, CROP, CROP, CROP)


def test_peak_levels_keep_a_thin_line_that_the_box_filter_averages_away():
    array = np.zeros((GRID,) * 3, np.float32)
    array[16, 16, :] = 1.0  # a one-voxel guide-wire along x
    box, peak = scale_levels(array, (9, 1), "box")[0], scale_levels(array, (9, 1), "peak")[0]
    assert box[16, 16, 16] == pytest.approx(9 / 9**3)  # the box filter leaves 1/81 of it
    assert peak[16, 16, 16] == pytest.approx(3 / 27 - 9 / 9**3)  # band-pass: box 3 minus box 9
    assert peak[20, 12, 5] == pytest.approx(peak[16, 16, 16])  # the running max spreads it over 9³
    assert box[21, 16, 16] < 1e-6 and peak[22, 16, 16] < 1e-6  # box 3 + max 9: at most 5 voxels away
    np.testing.assert_array_equal(scale_levels(array, (9, 1), "peak")[1], array)  # scale 1 unchanged
    with pytest.raises(InputError, match="unknown locator levels"):
        scale_levels(array, (9, 1), "gaussian")


def _two_level_sampler(context: bool) -> tuple[CropSampler, GridVolume]:
    ramp = _ramp_volume()
    levels = np.stack([ramp.levels[0], -ramp.levels[0]])  # tell the levels apart by sign
    volume = GridVolume(ramp.geometry, levels)
    return CropSampler([volume], SCALES, CROP, context=context), volume


def test_context_adds_the_crop_one_scale_coarser_at_the_last_position():
    sampler, _ = _two_level_sampler(context=True)
    history = np.array([[[10, 10, 10], [10, 11, 10], [11, 11, 10], [12, 11, 10]]] * 2)
    states = sampler.states(np.array([0, 0]), history, np.array([1, 0]))
    assert states.shape == (2, 5, CROP, CROP, CROP)
    last = np.array([[12, 11, 10]] * 2)
    coarse = sampler.crops(np.array([0, 0]), last, np.array([0, 0]))
    np.testing.assert_array_equal(states[:, 4], coarse)  # scale 1 -> scale 3; scale 3 stays at 3
    np.testing.assert_array_equal(states[0, :4], sampler.frames(np.array([0]), history[:1], np.array([1]))[0])
    assert np.all(states[0, :4] < 0) and np.all(coarse[coarse != 0] > 0)
    plain, _ = _two_level_sampler(context=False)
    assert plain.states(np.array([0]), history[:1], np.array([1])).shape == (1, 4, CROP, CROP, CROP)


def test_replayed_states_cut_the_context_at_the_position_before_and_after_the_move():
    sampler, _ = _two_level_sampler(context=True)
    history = np.array([[[10, 10, 10], [10, 11, 10], [11, 11, 10], [12, 11, 10]]], np.int16)
    batch = {"volume": np.array([0]), "history": history, "next": np.array([[12, 12, 10]], np.int16)}
    batch["scale"] = np.array([1], np.int8)
    before, after = LocatorTrainer._replayed_states(sampler, batch)
    assert before.shape == after.shape == (1, 5, CROP, CROP, CROP)
    crop_at = lambda p, k: sampler.crops(np.array([0]), np.array([p]), np.array([k]))[0]  # noqa: E731
    np.testing.assert_array_equal(before[0, 4], crop_at([12, 11, 10], 0))
    np.testing.assert_array_equal(after[0, 4], crop_at([12, 12, 10], 0))
    np.testing.assert_array_equal(after[0, 3], crop_at([12, 12, 10], 1))
    np.testing.assert_array_equal(after[0, :3], before[0, 1:4])


def test_oscillation_detection():
    a, b, c = (1, 1, 1), (1, 1, 2), (5, 5, 5)
    assert is_oscillating([a, b, a, b, a, b, a])
    assert not is_oscillating([a, b, a, b, a, b])
    assert not is_oscillating([a, b, c, a, b, c, a, b, c])
    assert not is_oscillating([a, a, a, a] + [(i, 0, 0) for i in range(20)])  # repeats left the window


def test_oscillation_jumps_to_the_lowest_q_position_then_goes_down_a_scale():
    agents = _Agents(np.array([[5, 5, 5]]))
    agents.visits[0] = [(5, 5, 5), (8, 5, 5), (5, 5, 5), (8, 5, 5)]
    agents.trail_q[0] = [0.9, -0.2, 0.8, -0.1]
    _settle(agents, 0, n_scales=2)
    assert agents.scale[0] == 1 and agents.active[0]
    assert agents.pos[0].tolist() == [8, 5, 5] and agents.history[0].tolist() == [[8, 5, 5]] * 4
    agents.visits[0], agents.trail_q[0] = [(8, 5, 5), (9, 5, 5)], [0.3, 0.1]
    _settle(agents, 0, n_scales=2)  # oscillating at the finest scale ends the search
    assert not agents.active[0] and agents.final_q[0] == pytest.approx(0.1)
    assert agents.pos[0].tolist() == [9, 5, 5]


def test_multiscale_search_of_an_oracle_reaches_the_target_going_through_every_scale():
    """Q = how much a move gains on a cone peaked at the target, read from the crop itself."""
    target = np.array([19, 7, 24])
    zz, yy, xx = np.meshgrid(*[np.arange(GRID)] * 3, indexing="ij")
    cone = -np.sqrt((zz - target[0]) ** 2 + (yy - target[1]) ** 2 + (xx - target[2]) ** 2)
    geometry = grid_geometry(sitk.Image([GRID] * 3, sitk.sitkFloat32), GRID)
    sampler = CropSampler([GridVolume(geometry, np.stack([cone, cone]).astype(np.float32))], SCALES, CROP)
    h = CROP // 2
    scales_seen = []

    def oracle(states, scale_index):
        scales_seen.extend(scale_index.tolist())
        last = states[:, -1]
        centre = last[:, h, h, h]
        neighbours = [last[:, h + d[0], h + d[1], h + d[2]] for d in ACTIONS]
        return np.stack(neighbours, axis=1) - centre[:, None]

    result = multiscale_search(oracle, sampler, start_positions(GRID, 9))
    assert np.all(result.positions == target)
    assert set(scales_seen) == {0, 1} and np.all(np.isfinite(result.q_values))


def test_replay_memory_stores_positions_and_stays_bounded():
    memory = ReplayMemory(capacity=1000)
    size = memory.nbytes
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = 128
        memory.push(
            volume=rng.integers(0, 5, n),
            history=rng.integers(0, GRID, (n, 4, 3)),
            scale=rng.integers(0, 2, n),
            action=rng.integers(0, 6, n),
            reward=rng.uniform(-1, 1, n),
            next=rng.integers(0, GRID, (n, 3)),
        )
    assert len(memory) == 1000 and memory.nbytes == size
    assert size <= 40 * 1000  # 36 bytes a transition; one 4 x 21³ float32 state alone is 148 kB
    batch = memory.sample(64, rng)
    assert batch["history"].shape == (64, 4, 3) and batch["next"].shape == (64, 3)
    restored = ReplayMemory(capacity=1000)
    restored.load_state_dict(memory.state_dict())
    np.testing.assert_array_equal(restored.history, memory.history)


# ------------------------------------------------------------------------------------------ training


def test_all_action_outcomes_score_every_move_from_the_known_target():
    positions = np.array([[5, 5, 5], [0, 5, 5]])
    targets = np.array([[5.0, 5.0, 9.0], [0.0, 5.0, 5.0]])
    new, rewards = all_action_outcomes(positions, np.array([1, 2]), targets, np.ones((2, 3)), grid=16)
    assert new.shape == (2, 6, 3) and rewards.shape == (2, 6)
    np.testing.assert_array_equal(new[0], positions[0] + ACTIONS)
    assert rewards[0, 4] == pytest.approx(1.0) and rewards[0, 5] == pytest.approx(-1.0)  # +x, -x
    assert rewards[0, :4] == pytest.approx(np.full(4, 4.0 - np.hypot(4.0, 1.0)))  # sideways: a little worse
    assert rewards[1, 1] == -1.0 and (new[1, 1] == positions[1]).all()  # -z from z = 0: refused, stays
    assert rewards[1, 0] == pytest.approx(-1.0)  # +z by 2 from the target: a whole step away


def test_all_action_updates_learn_the_best_action_of_each_state():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = QNetworkConfig(crop=CROP, n_scales=1, width=4, hidden=32)
    agent = DQNAgent(config, torch.device("cpu"), lr=3e-3, gamma=0.0)
    states = rng.normal(size=(6, 4, CROP, CROP, CROP)).astype(np.float32)
    rewards = -np.ones((6, 6), np.float32)
    rewards[np.arange(6), rng.permutation(6)] = 1.0  # a different best action in each state
    scale = np.zeros(6, np.int64)
    before = q_values(agent.online, states, scale, agent.device).argmax(1)
    for _ in range(150):
        agent.update_all_actions(states, None, rewards, scale)
    after = q_values(agent.online, states, scale, agent.device)
    assert (after.argmax(1) == rewards.argmax(1)).all(), (before, after.argmax(1))
    with_future = DQNAgent(config, torch.device("cpu"), gamma=0.9)
    next_states = np.repeat(states, 6, axis=0)
    target_before = {k: v.clone() for k, v in with_future.target.state_dict().items()}
    losses = with_future.update_all_actions(states, next_states, rewards, scale)
    assert np.isfinite(losses["loss"])
    assert all(torch.equal(v, with_future.target.state_dict()[k]) for k, v in target_before.items())


def _final_distances(locator, data_dir, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances (grid voxels) to the target of the trained greedy search and of a random policy."""
    rng = np.random.default_rng(seed)
    trained_d, random_d = [], []
    for _ in range(4):
        image, centre = _blob_image(rng)
        volume = prepare_volume(image, GRID, SCALES)
        sampler = CropSampler([volume], SCALES, CROP)
        target = volume.geometry.to_index(centre)
        starts = start_positions(GRID, 9)
        result = multiscale_search(
            lambda s, k: q_values(locator.network, s, k, locator.device), sampler, starts
        )
        trained_d += list(np.linalg.norm(result.positions - target, axis=1))
        walk = starts.copy()
        for _ in range(result.steps):
            walk, _ = move(walk, rng.integers(0, 6, len(walk)), np.ones(len(walk), int), GRID)
        random_d += list(np.linalg.norm(walk - target, axis=1))
    return np.array(trained_d), np.array(random_d)


def test_training_ends_closer_to_the_target_than_a_random_policy(trained, blob_data):
    folder, events = trained
    locator = load_locator(folder)
    trained_d, random_d = _final_distances(locator, blob_data.parent, seed=11)
    assert np.median(trained_d) < 0.5 * np.median(random_d), (trained_d, random_d)
    assert np.mean(trained_d <= 3) >= 0.5
    kinds = [e for e, _ in events]
    assert kinds[0] == "preparing" and "started" in kinds and kinds[-1] == "finished"
    validation = [f["metrics"] for e, f in events if e == "validation"]
    assert validation and {"median_vox", "mean_mm", "within10_pct"} <= set(validation[-1])


def test_locator_round_trips_through_its_folder(trained, tmp_path):
    folder, _ = trained
    locator = load_locator(folder)
    assert locator.grid == GRID and locator.crop == CROP and locator.scales == SCALES
    meta = json.loads((folder / "locator.json").read_text())
    assert meta["training"]["cases"] == 8 and meta["metrics"]["validation"]
    assert meta["selected_step"] in (250, 500)  # the network of the best validation is kept
    copy = load_locator(save_locator(tmp_path / "copy", locator.network, meta))
    states = np.random.default_rng(0).standard_normal((3, 4, CROP, CROP, CROP)).astype(np.float32)
    scale = np.array([0, 1, 0])
    np.testing.assert_array_equal(
        q_values(copy.network, states, scale, copy.device),
        q_values(locator.network, states, scale, locator.device),
    )
    image, centre = _blob_image(np.random.default_rng(5))
    found = locate(copy, image, starts=3)
    assert len(found.point_lps) == 3 and np.isfinite(found.q_value) and found.agents == 3
    assert np.linalg.norm(np.subtract(found.point_lps, centre)) < 4.0  # mm; 0.8 mm voxels


@pytest.mark.parametrize(
    "variant",
    [
        {"all_actions": True},
        {"all_actions": False},
        {"all_actions": True, "context": True, "levels": "peak"},
        {"all_actions": False, "context": True, "levels": "peak"},
    ],
    ids=["all-actions", "taken-action", "all-actions-context-peak", "taken-action-context-peak"],
)
def test_training_stops_with_a_checkpoint_and_resumes(blob_data, tmp_path, variant):
    out = tmp_path / "resumable"
    config = _config(blob_data, out, steps=40, warmup=32, val_every=40, checkpoint_every=20, **variant)
    reporter = _Recorder(stop_at=10)
    trainer = LocatorTrainer(config, reporter)
    reporter.trainer = trainer
    with pytest.raises(TrainingCancelled):
        trainer.run()
    assert (out / ".training" / "checkpoint.pt").is_file()
    assert LocatorTrainer.stored_config(out).steps == 40
    resumed = _Recorder()
    folder = LocatorTrainer(LocatorTrainer.stored_config(out), resumed).run(resume=True)
    started = next(f for e, f in resumed.events if e == "started")
    assert started["step"] >= 10 and (folder / "weights.pt").is_file()
    assert not (out / ".training" / "checkpoint.pt").exists()
    locator = load_locator(folder)
    assert locator.context == variant.get("context", False) and locator.levels == variant.get("levels", "box")
    image, _ = _blob_image(np.random.default_rng(2))
    assert np.isfinite(locate(locator, image, starts=2).q_value)


# ------------------------------------------------------------------------------------------ bad input


def test_a_volume_smaller_than_a_crop_is_refused(trained):
    locator = load_locator(trained[0])
    small = sitk.Image([CROP - 2, 20, 20], sitk.sitkFloat32)
    with pytest.raises(InputError, match="smaller than the locator's crop"):
        locate(locator, small)


def test_a_dataset_without_any_centre_is_refused(tmp_path):
    data = _write_blob_dataset(tmp_path / "nocentre", n=3, seed=1, with_center=False)
    with pytest.raises(InputError, match="no case with a 'center'"):
        LocatorTrainer(_config(data, tmp_path / "never")).run()


def test_a_corrupt_or_missing_locator_gives_a_clear_error(trained, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("locator.json", "weights.pt"):
        (folder / name).write_bytes((trained[0] / name).read_bytes())
    (folder / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot load locator weights"):
        load_locator(folder)
    (folder / "locator.json").write_text("{ truncated")
    with pytest.raises(ModelError, match="corrupt"):
        load_locator(folder)
    with pytest.raises(ModelError, match="not found"):
        load_locator(tmp_path / "absent")
    config = QNetworkConfig(crop=CROP, n_scales=2, width=4)
    meta = {"name": "x", "grid_size": GRID, "crop_size": CROP, "scales": [3, 1]}
    other = save_locator(tmp_path / "other", QNetwork(config), meta)
    data = json.loads((other / "locator.json").read_text())
    data["network"]["width"] = 8
    (other / "locator.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="does not match its weights"):
        load_locator(other)
    for key, value in (("grid_size", "x"), ("crop_size", 0), ("scales", [3, 1.5]), ("scales", "31")):
        (other / "locator.json").write_text(json.dumps({**data, key: value}))
        with pytest.raises(ModelError, match=key):  # was a ValueError traceback in `locate`
            load_locator(other)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_locate_prints_the_point_and_confidence(trained, tmp_path, capsys):
    image, centre = _blob_image(np.random.default_rng(8))
    path = tmp_path / "blob.nrrd"
    sitk.WriteImage(image, str(path))
    assert main(["locate", "--locator", str(trained[0]), "--input", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) >= {"point_lps", "index_xyz", "q_value", "seconds"}
    assert np.allclose(
        image.TransformContinuousIndexToPhysicalPoint(record["index_xyz"]), record["point_lps"]
    )
    assert main(["locate", "--locator", str(trained[0]), "--input", str(path)]) == 0
    text = capsys.readouterr().out
    assert "LPS mm" in text and "voxel" in text and "confidence" in text
    assert main(["locate", "--locator", str(tmp_path / "nothing"), "--input", str(path)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def seg_model(tiny_phantom, tmp_path_factory):
    model = tmp_path_factory.mktemp("segmodel") / "model"
    train = ["train", "--data", str(tiny_phantom), "--out", str(model), "--steps", "1", "--patch", "16"]
    assert main([*train, "--width", "0.125", "--val-cases", "0", "--progress", "none"]) == 0
    return model


def test_cli_segment_with_a_locator_and_no_centre(trained, seg_model, tiny_phantom, tmp_path, capsys):
    from SemiSupSegLib.dataset import load_dataset

    model = seg_model

    case = load_dataset(tiny_phantom).test[0]
    out = tmp_path / "seg.nrrd"
    argv = ["segment", "--model", str(model), "--locator", str(trained[0]), "--input", str(case.image)]
    assert main([*argv, "--output", str(out), "--precision", "fp32"]) == 0
    assert "located the instrument at" in capsys.readouterr().out
    label = sitk.ReadImage(str(out))
    assert label.GetSize() == sitk.ReadImage(str(case.image)).GetSize()
    evaluate = ["evaluate", "--model", str(model), "--data", str(tiny_phantom), "--locator", str(trained[0])]
    assert main([*evaluate, "--json", str(tmp_path / "eval.json"), "--precision", "fp32"]) == 0
    summary = json.loads((tmp_path / "eval.json").read_text())["summary"]
    assert {"loc_mm", "loc_vox", "loc_grid_vox"} <= set(summary)


def test_demo_runs_with_a_locator_and_no_centre(trained, seg_model, tmp_path, capsys):
    argv = [
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--cases",
        "1",
        "--size",
        "48",
        "--model",
        str(seg_model),
    ]
    assert main([*argv, "--locator", str(trained[0]), "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "found by locator" in out and "localisation error" in out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert "loc_mm" in results["cases"][0]
