"""The training panel's engine side: child-process commands, the protocol reader, the run state,
stopping a process tree, the output-folder lock, the run's data, the estimate and the comparison.

The central test launches ``semisupseg train`` as a real child process through
:class:`~SemiSupSegLib.childprocess.ChildProcess`, stops it mid-run with the tree kill, checks the
checkpoint, resumes it and loads the final model (``Testing/test_cli.py`` tests the CLI's own SIGTERM path).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from SemiSupSegLib import model_index
from SemiSupSegLib import train_process as tp
from SemiSupSegLib.childprocess import ChildProcess, ProtocolError, ProtocolParser
from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.errors import InputError
from SemiSupSegLib.networks import NetworkConfig
from SemiSupSegLib.runlock import RunLock, is_locked, lock_path, pid_alive, read_lock

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "mrml", "sitkUtils"}
posix_only = pytest.mark.skipif(os.name == "nt", reason="process groups and signals are POSIX here")


def _tiny_request(data, out, **kw) -> tp.TrainRequest:
    base = dict(
        data=str(data),
        out=str(out),
        method="dual-unet",
        steps=16,
        batch=1,
        patch=(16, 16, 16),
        width=0.125,
        device="cpu",
        val_cases=1,
        val_every=8,
        checkpoint_every=1000,
        options={"mc_samples": 2},
    )
    base.update(kw)
    return tp.TrainRequest(**base)


def _gone(pid: int) -> bool:
    """Dead or a zombie (a zombie holds no resources and will be reaped by its new parent)."""
    if not pid_alive(pid):
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except OSError:
        return False


def _wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ------------------------------------------------------------------------------- scene-free module
def test_the_module_imports_no_slicer_qt_nor_torch_at_import_time():
    tree = ast.parse((REPO / "SemiSupSeg" / "SemiSupSegLib" / "train_process.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    assert not roots & FORBIDDEN
    code = (
        "import sys, SemiSupSegLib.train_process\n"
        "print(sorted(m for m in sys.modules if m in ('torch', 'monai')))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupSeg")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------- commands
def test_commands_are_argument_lists_never_shell_strings(tmp_path):
    nasty = tmp_path / "my data; rm -rf ~ && $(echo x)" / "dataset.json"
    request = _tiny_request(nasty, tmp_path / "out dir", init="/models/start model", options={"ramp": 0.5})
    command = tp.training_command(request, python="/opt/Slicer/bin/PythonSlicer")
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    assert command[:5] == ["/opt/Slicer/bin/PythonSlicer", "-m", "SemiSupSegLib.cli", "train", "--data"]
    assert command[5] == str(nasty)  # one argument, unquoted, never interpreted by a shell
    assert command[-2:] == ["--progress", "json"]
    pairs = dict(zip(command[4::2], command[5::2], strict=False))
    assert pairs["--patch"] == "16,16,16" and pairs["--device"] == "cpu" and pairs["--method"] == "dual-unet"
    assert pairs["--init"] == "/models/start model" and pairs["--option"] == "ramp=0.5"
    resume = tp.resume_command(tmp_path / "out dir")
    assert resume[0] == sys.executable and resume[3:] == [
        "train",
        "--out",
        str(tmp_path / "out dir"),
        "--resume",
        "--progress",
        "json",
    ]
    locator = tp.locator_command([nasty], tmp_path / "loc", steps=50, device="gpu")
    assert locator[3] == "train-locator" and locator[locator.index("--device") + 1] == "cuda"
    assert "--points-only" not in locator  # locator II by default: recognition from the masks
    assert "--points-only" in tp.locator_command([nasty], tmp_path / "loc", points_only=True)
    # a panel's GPU entry (slicer_bridge.device_choices) trains on that GPU
    chosen = tp.locator_command([nasty], tmp_path / "loc", device="GPU 1: NVIDIA A100 (80 GiB)")
    assert chosen[chosen.index("--device") + 1] == "cuda:1"
    with pytest.raises(InputError):
        tp.training_command(_tiny_request(nasty, tmp_path, device="tpu"))
    with pytest.raises(InputError):
        tp.training_command(_tiny_request(nasty, tmp_path, device="cuda:x"))
    with pytest.raises(TypeError):
        ChildProcess("python -m SemiSupSegLib.cli train")  # a shell string is refused


def test_child_environment_cpu_mode_and_engine_path():
    env = tp.child_environment("cpu", base={"PYTHONPATH": "/elsewhere", "PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "-1" and env["PATH"] == "/bin"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tp.ENGINE_DIR), "/elsewhere"]
    assert "CUDA_VISIBLE_DEVICES" not in tp.child_environment("auto", base={})
    assert (tp.ENGINE_DIR / "SemiSupSegLib" / "cli" / "__init__.py").is_file()


def _panel_parameter_defaults() -> dict:
    """The training panel's parameter-node defaults, read from its source (it needs Qt to import)."""
    source = Path(__file__).resolve().parents[1] / "SemiSupSegTraining" / "SemiSupSegTraining.py"
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef) and node.name.endswith("ParameterNode"):
            assigned = [item for item in node.body if isinstance(item, ast.AnnAssign) and item.value]
            named = {item.target.id: item.value for item in assigned}
            return {k: v.id if isinstance(v, ast.Name) else ast.literal_eval(v) for k, v in named.items()}
    raise AssertionError("no parameter node class in the training panel")


def test_training_defaults_have_one_source():
    """Unset settings are left to ``semisupseg train`` (TrainConfig); the panel shows TrainConfig's
    values and its method is its own named choice."""
    from SemiSupSegLib.training import TrainConfig

    bare = tp.TrainRequest(data="d.json", out="o").arguments()
    assert bare == ["--data", "d.json", "--out", "o", "--device", "auto"]
    panel = _panel_parameter_defaults()
    assert (panel["steps"], panel["batch"]) == (TrainConfig.steps, TrainConfig.batch)
    assert panel["width"] == TrainConfig.width
    assert (panel["patch"],) * 3 == tuple(TrainConfig.patch_size) and panel["method"] == "PANEL_METHOD"
    assert panel["augment"] == TrainConfig.augment


def test_panel_offers_every_augmentation_level_and_passes_it_on():
    """The training panel's Augmentation combo box lists exactly ``semisupseg train --augment``'s levels
    (its items are in the .ui file, the levels in the torch-side engine) and binds the parameter node."""
    import xml.etree.ElementTree as ET

    from SemiSupSegLib.augmentation import AUGMENTATIONS
    from SemiSupSegLib.training import TrainConfig

    panel = Path(__file__).resolve().parents[1] / "SemiSupSegTraining"
    ui = panel / "Resources" / "UI" / "SemiSupSegTraining.ui"
    combo = ET.parse(ui).find(".//widget[@name='augmentComboBox']")
    items = [item.findtext("property/string") for item in combo.findall("item")]
    assert sorted(items) == sorted(AUGMENTATIONS) and items[0] == TrainConfig.augment
    bound = combo.find("property[@name='SlicerParameterName']/string").text
    assert bound == "augment" and bound in _panel_parameter_defaults()
    arguments = tp.TrainRequest(data="d.json", out="o", augment="scanner").arguments()
    assert arguments[arguments.index("--augment") + 1] == "scanner"


# ------------------------------------------------------------------------------- protocol reader
def test_parser_handles_partial_lines_noise_and_refuses_unknown_versions():
    parser = ProtocolParser()
    line = json.dumps({"protocol": 1, "event": "progress", "step": 3, "total": 9, "losses": {"loss": 0.5}})
    events = parser.feed("Warning: something from a library\n" + line[:17])
    assert events == [] and list(parser.noise) == ["Warning: something from a library"]
    events = parser.feed(line[17:] + '\n{not json\n[1, 2]\n{"event": "x"}\n\n')
    assert [e["step"] for e in events] == [3]
    assert list(parser.noise)[1:] == ["{not json", "[1, 2]", '{"event": "x"}']
    assert parser.feed('{"protocol": "1.2", "event": "checkpoint", "step": 4}') == []
    assert parser.close()[0]["event"] == "checkpoint"  # a last line without newline
    assert parser.feed('\ufeff{"protocol": 1.0, "event": "started"}\r\n')[0]["event"] == "started"
    for version in (2, "2.0", None, True):
        with pytest.raises(ProtocolError, match="protocol"):
            ProtocolParser().feed(json.dumps({"protocol": version, "event": "started"}) + "\n")


def test_run_state_follows_a_run_and_explains_an_abrupt_end():
    state = tp.RunState()
    state.begin("training")
    events = [
        {"event": "preparing", "case": "a", "index": 1, "total": 3},
        {
            "event": "started",
            "task": "training",
            "step": 0,
            "total": 10,
            "summary": {"method": "dual-unet", "device": "cuda:1", "world_size": 2},
        },
        {
            "event": "progress",
            "step": 5,
            "total": 10,
            "losses": {"loss": 0.8, "sup": 0.6},
            "seconds_per_step": 2.0,
            "eta_seconds": 10.0,
        },
        {"event": "validation", "step": 5, "total": 10, "metrics": {"dice": 0.4, "hd95_mm": 3.0}},
        {"event": "checkpoint", "step": 5, "path": "out/.training/checkpoint.pt"},
        {
            "event": "progress",
            "step": 6,
            "total": 10,
            "losses": {"loss": 0.7},
            "seconds_per_step": 2.0,
            "eta_seconds": 8.0,
        },
    ]
    state.update(events[0])
    assert state.status == "preparing" and "case 1/3" in state.status_text()
    for e in events[1:]:
        state.update(e)
    assert state.status == "running" and state.fraction == 0.6 and state.eta_text() == "00:08"
    assert state.status_text().endswith("ETA 00:08 on cuda:1 x 2 processes")  # Auto says what it chose
    assert state.loss_series() == ([5, 6], [0.8, 0.7]) and state.validation_series() == ([5], [0.4])
    assert "loss 0.7000" in state.losses_text() and state.checkpoint_step == 5
    state.stopping()
    state.process_ended(-9, ["killed"])
    assert state.status == "cancelled" and "step 5 is usable" in state.message
    # resuming keeps the history up to the checkpoint
    state.begin("training", keep_history=True)
    state.update({"event": "started", "task": "training", "step": 5, "total": 10})
    assert state.loss_series() == ([5], [0.8]) and state.start_step == 5
    state.update({"event": "finished", "step": 10, "total": 10, "model": "out", "metrics": {"dice": 0.5}})
    assert state.done and state.model == "out" and state.fraction == 1.0
    crashed = tp.RunState()
    crashed.begin("training")
    crashed.process_ended(1, ["Traceback ...", "MemoryError"])
    assert crashed.status == "error" and "status 1" in crashed.message and "MemoryError" in crashed.message


# ------------------------------------------------------------------------------- the lock
def test_lock_refuses_a_second_holder_and_cleans_up(tmp_path):
    out = tmp_path / "new" / "run"
    with RunLock(out):
        info = read_lock(out)
        assert info["pid"] == os.getpid() and is_locked(out)["pid"] == os.getpid()
        with pytest.raises(InputError, match=r"another training is writing to .*\(pid \d+ since "):
            RunLock(out).acquire()
    assert not lock_path(out).exists() and not out.exists()  # folders it made and left empty are gone
    assert is_locked(out) is None


@posix_only
def test_lock_held_by_another_process_and_recovered_when_it_dies(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(REPO / "SemiSupSeg")!r})
            from SemiSupSegLib.runlock import RunLock
            RunLock({str(out)!r}).acquire()
            print("held", flush=True)
            time.sleep(120)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"pid {holder.pid}"):
            RunLock(out).acquire()
        holder.kill()  # dies without releasing: the file stays, its flock goes
        holder.wait()
        assert lock_path(out).exists() and is_locked(out) is None
        with RunLock(out):
            assert read_lock(out)["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_file_of_a_dead_pid_is_replaced(tmp_path, monkeypatch):
    import socket

    from SemiSupSegLib import runlock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    lock_path(out).parent.mkdir(parents=True)
    record = {"pid": dead.pid, "host": socket.gethostname(), "started": "yesterday"}
    lock_path(out).write_text(json.dumps(record))
    monkeypatch.setattr(runlock, "fcntl", None)  # the pid rule, as on Windows
    with RunLock(out):
        assert read_lock(out)["pid"] == os.getpid()
    # a lock of another machine is never taken over
    lock_path(out).parent.mkdir(parents=True, exist_ok=True)
    lock_path(out).write_text(json.dumps({**record, "host": "elsewhere"}))
    with pytest.raises(InputError, match="on elsewhere"):
        RunLock(out).acquire()
    assert runlock.break_lock(out)


def test_trainer_refuses_a_locked_folder_before_reading_data(tmp_path):
    from SemiSupSegLib.training import TrainConfig, Trainer

    out = tmp_path / "run"
    config = TrainConfig(data=str(tmp_path / "missing.json"), out=str(out), patch_size=(16, 16, 16))
    with RunLock(out), pytest.raises(InputError, match="another training is writing"):
        Trainer(config).run()


# ------------------------------------------------------------------------------- the process tree
@posix_only
def test_tree_kill_ends_children_that_ignore_sigterm(tmp_path):
    script = textwrap.dedent("""
        import json, signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
        print(json.dumps({"protocol": 1, "event": "started", "grandchild": child.pid}), flush=True)
        time.sleep(120)
    """)
    proc = ChildProcess([sys.executable, "-c", script]).start()
    events = proc.wait_events(lambda e: e["event"] == "started", timeout=30)
    grandchild = events[-1]["grandchild"]
    time.sleep(0.3)  # let the grandchild install its handler
    t0 = time.monotonic()
    proc.request_stop(grace=1.0)
    assert _wait_until(lambda: (proc.poll() or True) and not proc.running, timeout=20)
    assert time.monotonic() - t0 >= 0.9  # SIGTERM was ignored by the grandchild: killed after the grace
    assert _wait_until(lambda: _gone(grandchild), timeout=10)
    assert proc.returncode == -signal.SIGTERM


# ------------------------------------------------------------------------------- a real run
def _run_cli_here(command: list[str]) -> tuple[int, list[dict]]:
    """Run ``[python, -m, SemiSupSegLib.cli, ARGS]`` in this process: its exit code and JSON events."""
    import torch

    from SemiSupSegLib.cli import main

    assert command[1:3] == ["-m", "SemiSupSegLib.cli"], command
    out = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child's OMP_NUM_THREADS=1: a tiny network runs fastest on one thread
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main(command[3:])
    finally:
        torch.set_num_threads(threads)
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def stopped_and_resumed(tiny_phantom, tmp_path_factory):
    """Train (real child process), refuse a concurrent run, stop it mid-run, resume to the end."""
    out = tmp_path_factory.mktemp("runs") / "dual"
    env = tp.child_environment("cpu", base={**os.environ, "OMP_NUM_THREADS": "1"})
    request = _tiny_request(tiny_phantom, out)
    first = ChildProcess(tp.training_command(request), env=env).start()
    state = tp.RunState()
    state.begin("training")
    for event in first.wait_events(lambda e: e["event"] == "progress" and e["step"] >= 3, timeout=120):
        state.update(event)
    # a second run on the same folder is refused while the first holds the lock; the first is
    # paused meanwhile (SIGSTOP to its process group) so that it cannot finish before the stop below
    # (in this process, the command line the panel would run: a child importing torch and MONAI costs ~8 s)
    os.killpg(first.proc.pid, signal.SIGSTOP)
    try:
        second_code, second_events = _run_cli_here(tp.training_command(request))
    finally:
        os.killpg(first.proc.pid, signal.SIGCONT)
    first.request_stop(grace=60)
    state.stopping()
    while first.running:
        for event in first.poll():
            state.update(event)
        time.sleep(0.05)
    for event in first.poll():
        state.update(event)
    state.process_ended(first.returncode, first.stderr_tail)
    checkpoint_existed = tp.checkpoint_path(out).is_file()
    lock_left = lock_path(out).exists()
    resumed_state = tp.RunState(**{k: getattr(state, k) for k in ("loss_history", "validation_history")})
    resumed_state.begin("training", keep_history=True)
    # the resume runs the panel's command line in this process (the first run tested the child process)
    resumed_code, resumed_events = _run_cli_here(tp.resume_command(out))
    for event in resumed_events:
        resumed_state.update(event)
    resumed_state.process_ended(resumed_code, [])
    return {
        "out": out,
        "state": state,
        "first_code": first.returncode,
        "second_events": second_events,
        "second_code": second_code,
        "checkpoint_existed": checkpoint_existed,
        "lock_left": lock_left,
        "resumed": resumed_state,
        "resumed_code": resumed_code,
    }


def test_a_real_training_stops_on_the_tree_kill_and_resumes_to_a_loadable_model(stopped_and_resumed):
    from SemiSupSegLib.model_store import load_model

    run = stopped_and_resumed
    state, resumed = run["state"], run["resumed"]
    assert run["first_code"] == 130 and state.status == "cancelled", state.message
    assert run["checkpoint_existed"] and not run["lock_left"]
    assert state.summary["method"] == "dual-unet" and state.summary["unlabeled"] == 2
    assert 3 <= state.step < 16 and state.loss_series()[0][0] >= 1
    assert state.loss_key() in ("loss", "segmenters/loss")
    assert run["second_code"] == 2
    assert run["second_events"][-1]["event"] == "error"
    assert "another training is writing to" in run["second_events"][-1]["message"]
    assert run["resumed_code"] == 0 and resumed.status == "finished", resumed.message
    assert resumed.start_step == state.step and resumed.step == 16
    assert resumed.validation_series()[0] == [8, 16]
    assert resumed.loss_series()[0][0] <= state.step  # history from before the stop is kept
    model = load_model(run["out"])
    assert model.meta["method"] == "dual-unet" and model.meta["training"]["validation_cases"]
    assert not tp.checkpoint_path(run["out"]).exists() and not lock_path(run["out"]).exists()


def test_compare_new_and_current_model_side_by_side(stopped_and_resumed, tiny_phantom, tmp_path, capsys):
    from SemiSupSegLib.training import TrainConfig, Trainer

    current = Trainer(
        TrainConfig(
            data=str(tiny_phantom),
            out=str(tmp_path / "current"),
            steps=2,
            batch=1,
            patch_size=(16, 16, 16),
            width=0.125,
            val_cases=1,
            val_every=100,
            translation=6,
        )
    ).run()
    result = tp.compare_models(stopped_and_resumed["out"], current, device="cpu")
    assert result["cases_from"] == "validation" and len(result["rows"]) == 1
    row = result["rows"][0]
    assert set(row) == {"case", "new", "current"} and result["current"]["path"] == str(current)
    summary = result["summary"]
    for key in ("new", "current"):  # one row: the summary is that row, metric by metric
        assert summary[key] == {m: row[key][m] for m in summary[key]}
    assert result["better"] is (summary["new"]["dice"] >= summary["current"]["dice"])
    same = tp.compare_models(current, current, device="cpu")  # a model against itself: identical rows
    assert same["rows"][0]["new"]["dice"] == same["rows"][0]["current"]["dice"] and same["better"] is True
    table = tp.comparison_table(result)
    assert table[0] == ["case", "dice new", "dice current", "hd95_mm new", "hd95_mm current"]
    assert table[-1][0] == "mean" and len(table) == 3
    text = tp.comparison_text(result)
    verdict = "better than or as good as" if result["better"] else "worse than"
    assert "compared on 1 validation case(s)" in text
    assert f"is {verdict} '{result['current']['name']}'" in text
    assert "The new model is" not in tp.comparison_text({**result, "better": None})
    # the same through the child-process entry point: protocol lines ending with the result
    assert tp.main(["compare", "--new", str(stopped_and_resumed["out"]), "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "started" and lines[0]["task"] == "comparison"
    assert lines[-1]["event"] == "finished" and lines[-1]["result"]["current"] is None
    # make it the default
    assert model_index.default_model() is None
    model_index.set_default_model(stopped_and_resumed["out"])
    assert Path(model_index.default_model()) == stopped_and_resumed["out"].absolute()


# ------------------------------------------------------------------------------- data
def test_data_summary_merges_unlabelled_folders_and_chosen_validation(tiny_phantom, tmp_path):
    pool = load_dataset(tiny_phantom)
    extra = tmp_path / "new scans"
    extra.mkdir()
    shutil.copy(pool.unlabeled[0].image, extra / "scan_a.nii.gz")
    shutil.copy(pool.unlabeled[1].image, extra / "scan_b.nii.gz")
    shutil.copy(pool.training[0].label, extra / "scan_a_label.nii.gz")  # a label: left out
    (extra / "scan_a.seg.nrrd").write_text("not read")  # a Slicer segmentation: left out
    (extra / "notes.txt").write_text("not an image")
    summary = tp.summarize_data(tiny_phantom, [extra])
    assert (summary.labeled, summary.unlabeled_pool, summary.unlabeled_extra) == (4, 2, 2)
    assert summary.validation == [pool.training[-1].name] and summary.training == 3
    assert summary.ok and summary.dataset is None and "4 labelled case(s)" in summary.text()
    names = [c.name for c in pool.training]
    run_json = tmp_path / "out" / ".training" / "dataset.json"
    chosen = tp.build_run_dataset(tiny_phantom, [extra, extra], run_json, validation=[names[0], names[2]])
    assert chosen.ok and chosen.unlabeled_extra == 2 and chosen.dataset == str(run_json.absolute())
    merged = load_dataset(run_json)
    assert [c.name for c in merged.training][-2:] == [names[0], names[2]]
    assert len(merged.unlabeled) == 4 and all(c.image.is_absolute() for c in merged.cases())
    assert merged.raw["semisupseg_run"]["validation"] == [names[0], names[2]]
    (extra / "broken.nrrd").write_text("garbage")
    bad = tp.summarize_data(tiny_phantom, [extra, tmp_path / "nowhere"], validation=["nope"])
    assert not bad.ok
    text = "\n".join(bad.problems)
    assert "broken" in text and "nowhere" in text and "nope" in text
    too_many = tp.summarize_data(tiny_phantom, validation=names, check_images=False)
    assert not too_many.ok and "still train" in "\n".join(too_many.problems)


def test_run_folders_and_resumable_runs(tmp_path):
    root = tmp_path / "models"
    first = tp.new_run_folder("dual unet/2026", root)
    assert first == root / "dual-unet-2026"
    tp.checkpoint_path(first).parent.mkdir(parents=True)
    tp.checkpoint_path(first).write_bytes(b"x")
    assert tp.new_run_folder("dual unet/2026", root) == root / "dual-unet-2026-2"
    runs = tp.resumable_runs(root)
    assert [r["out"] for r in runs] == [str(first)] and runs[0]["locked"] is False
    with RunLock(first):
        assert tp.resumable_runs(root)[0]["locked"] is True


# ------------------------------------------------------------------------------- the estimate
class _StepClock:
    """``perf_counter`` that moves only inside ``compute_losses``: a known cost per optimiser stage."""

    def __init__(self, per_call: float) -> None:
        self.now, self.per_call = 100.0, per_call

    def perf_counter(self) -> float:
        return self.now


def test_estimate_text_names_the_total_time_and_warns_near_the_gpu_memory():
    cpu = {"seconds_per_step": 0.5, "device": "cpu"}
    assert tp.estimate_text(cpu, 7200) == "0.50 s per step on cpu: about 1:00:00 for 7200 steps"
    gpu = {"seconds_per_step": 0.1, "device": "cuda", "peak_memory_mb": 900.0, "gpu_memory_mb": 1000.0}
    assert tp.estimate_text(gpu, 10).endswith("GPU memory 900 of 1000 MB - lower the batch or the patch size")
    assert "lower" not in tp.estimate_text({**gpu, "peak_memory_mb": 500.0}, 10)


def test_estimate_of_seconds_per_step_on_a_dry_run(capsys, monkeypatch):
    from types import SimpleNamespace

    from SemiSupSegLib import step_estimate
    from SemiSupSegLib.methods import DualUNet

    clock = _StepClock(0.75)
    monkeypatch.setattr(step_estimate, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    original = DualUNet.compute_losses

    def timed(self, *args, **kwargs):
        clock.now += clock.per_call
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DualUNet, "compute_losses", timed)
    result = tp.estimate_seconds_per_step(
        "dual-unet", (16, 16, 16), batch=1, width=0.125, device="cpu", steps=2, options={"mc_samples": 2}
    )
    # two optimiser stages per step at 0.75 s each; the warm-up step is not counted
    assert result["seconds_per_step"] == pytest.approx(1.5) and result["warmup_seconds"] == pytest.approx(1.5)
    assert result["device"] == "cpu" and result["steps_timed"] == 2
    monkeypatch.undo()
    built = DualUNet(NetworkConfig(width=0.125), 100)
    assert result["parameters"] == sum(p.numel() for p in built.parameters())
    with pytest.raises(InputError):
        tp.estimate_seconds_per_step("no-such-method", (16, 16, 16), device="cpu")
    assert tp.main(["estimate", "--method", "supervised", "--patch", "16", "--width", "0.125",
                    "--batch", "1", "--device", "cpu", "--steps", "1"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in lines] == ["started", "finished"]
    assert lines[0]["task"] == "estimate" and lines[-1]["result"]["method"] == "supervised"
    assert tp.main(["estimate", "--patch", "15", "--device", "cpu"]) == 2
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["event"] == "error"
