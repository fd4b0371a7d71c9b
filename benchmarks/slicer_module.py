"""The Slicer module's engine process: its overhead over the command line, cancel latency, and the GIL test.

    .venv/bin/python -m benchmarks.slicer_module [--repeats 3] [--threads 2] [--out slicer-module]
    .venv/bin/python -m benchmarks.slicer_module --quick --out /tmp/x/slicer-module   # smoke test, ~2 min

Runs in slicer-core (real MRML, no desktop application), on the brain3d sample pair (Resources/SampleData, its 32
landmarks included), and measures:

1. **Overhead of the module path over the CLI**, same pair, same settings. CLI: the wall time of ``python -m
   metareg.app.cli register --fixed ... --moving ... --fixed-landmarks ... --moving-landmarks ... --warped W.nii.gz
   --field F.nii.gz --jacobian J.nii.gz --report R.json --quiet`` as a subprocess (files in a temporary folder,
   compressed NIfTI outputs, as a user would write them). Module: the wall time of
   ``MetaRegistrationLogic(scene).start(...)`` (reads the nodes, writes them as uncompressed .mha, starts ``python -m
   metareg.app.worker``), polling until ``job.done`` (every 10 ms; the module's GUI timer polls every 100 ms), then
   ``finish(job)`` (creates the output nodes). The two alternate (CLI first in odd repeats, module first in even
   ones); the table has the median of each, the median of the paired differences (of the walls, and of the walls
   minus each path's own engine total: the overhead proper, which the engine's load-dependent time does not blur),
   and the module path's parts:
   the ``start()`` call (of which write_inputs), process start to the worker's first JSON event ("start": the
   interpreter is up and ``metareg`` imported; not torch), the engine's own total (its report's ``seconds.total``),
   read_outputs, create_nodes, and the rest (the worker importing torch, reading the .mha inputs, writing the .mha
   outputs, exiting, and the last poll). Settings: the zoo's smallest 3D T1w model at its card's defaults (CLI
   ``--model NAME`` alone; module ``RegistrationSettings(model=NAME, affine=<card's>, refine_steps=None)``) and the
   fast iterative method (``--method iterative --iterations 40,20,10`` vs ``RegistrationSettings(iterations=(40, 20,
   10))``). One untimed warm-up of each path (a 1,1,1-iteration run) fills the file cache first; each module run
   starts from a freshly loaded scene (not timed).
2. **Cancel latency**: a long job is started (iterative, iterations 2000,1000,500; and the zoo model with
   refine_steps=2000, no affine, during refinement), the benchmark waits for the stage's progress message, calls
   ``job.cancel()`` (SIGTERM, SIGKILL after 1 s) and times until ``job.done`` (polled every 5 ms): median and max.
3. **The GIL test**: the fast iterative registration with a free main thread (``job.wait()``) and with the main thread
   holding the GIL in 100 ms C calls between polls (``ctypes.PyDLL("libc.so.6").usleep(100000)`` in a loop ``while not
   job.done``), as desktop Slicer's main thread does while Qt idles; ratio held/free (start to done), per repeat.
4. **The old design, simulated**: the thread-based engine no longer exists, so this row stands in for it: a
   pure-Python CPU-bound function (integer arithmetic in chunks, ~2 s) in a ``threading.Thread``, timed with a free
   main thread (``join()``) and with the main thread in the same usleep loop. The held run stops after a cap (7 s) and
   its time is extrapolated from the chunks it finished (the table says so): it would take ~20x as long.

Threads: ``--threads`` (default 2) goes to OMP_NUM_THREADS, MKL_NUM_THREADS and ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS of
this process (:func:`common.set_threads`) before any child starts, so the CLI subprocess and the module's worker both
inherit it. Device: ``auto`` for both (the GPU when torch sees one).

Outputs: ``--out STEM`` (default ``slicer-module``) writes ``benchmarks/results/STEM.{csv,md,json}``; a STEM with a
folder (``/tmp/x/name``) writes into that folder. ``--quick`` (1 repeat, iterative 4,2,1 only, no zoo rows, one
cancel, no warm-up) is for the test suite and needs ``--out`` with a folder (quick results never go into
benchmarks/results). The JSON has every run's numbers under ``overhead``, ``cancel_latency``, ``gil`` and
``thread_simulation``, and the machine's load (``uptime``) before and after.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import RESULTS, benchmark_parser, environment, set_threads, write_results

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The Slicer module's folder: its MetaRegistrationLib is imported from there (the project's editable install puts
#: the folder on the path) and the CLI subprocess gets it on its PYTHONPATH.
MODULE_DIR = REPO / "MetaRegistration"

DEFAULT_STEM = "slicer-module"
SAMPLES = REPO / "Resources" / "SampleData"
FILES = {"fixed": SAMPLES / "brain3d_fixed_T1.nii.gz", "moving": SAMPLES / "brain3d_moving_T1.nii.gz",
         "fixed_landmarks": SAMPLES / "brain3d_fixed_landmarks.mrk.json",
         "moving_landmarks": SAMPLES / "brain3d_moving_landmarks.mrk.json"}

FAST_ITERATIONS = (40, 20, 10)
QUICK_ITERATIONS = (4, 2, 1)
WARMUP_ITERATIONS = (1, 1, 1)
SLOW_ITERATIONS = (2000, 1000, 500)
CANCEL_REFINE_STEPS = 2000
#: how often the benchmark polls a job (s): fine enough to time the module path, not the GUI's 100 ms timer
POLL_SECONDS = 0.01
CANCEL_POLL_SECONDS = 0.005
HOLD_PERIOD_US = 100_000
SIMULATION_SECONDS = 2.0
SIMULATION_CAP_SECONDS = 7.0
SIMULATION_CHUNK = 20_000


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_sample() -> dict:
    """The machine's busy and stolen CPU seconds so far (/proc/stat), this process's and its reaped children's CPU
    seconds (getrusage), and the time."""
    import resource

    busy = steal = float("nan")
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, stolen = fields
        busy, steal = (user + nice + system + irq + softirq) / _TICK, stolen / _TICK
    except (OSError, ValueError, IndexError):
        pass
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"time": time.perf_counter(), "busy": busy, "steal": steal, "self": own.ru_utime + own.ru_stime,
            "children": children.ru_utime + children.ru_stime}


def cpu_delta(before: dict, after: dict) -> dict:
    """What the CPUs did between two samples: the child's CPU seconds (the CLI subprocess or the module's worker,
    reaped in between), and the CPU cores that *other* processes of the machine kept busy on average (all busy time
    minus this process and its children), and the cores stolen by the hypervisor. On this shared machine that says
    whether a slow run was slowed by other work."""
    wall = max(after["time"] - before["time"], 1e-9)
    child = after["children"] - before["children"]
    others = (after["busy"] - before["busy"]) - (after["self"] - before["self"]) - child
    return {"child_cpu_s": child, "others_cores": max(others, 0.0) / wall,
            "steal_cores": (after["steal"] - before["steal"]) / wall}


def median(values) -> float:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(values) if values else float("nan")


def summary(values) -> dict:
    values = [float(v) for v in values]
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 4) for v in values]}


# ---------------------------------------------------------------------------------------------------------------------
# The two paths


class Setting:
    """One registration setting, as CLI arguments and as the module's RegistrationSettings."""

    def __init__(self, key: str, title: str, cli_args: list[str], module_settings):
        self.key, self.title, self.cli_args, self.module_settings = key, title, cli_args, module_settings


def iterative_setting(logic, iterations, key="iterative") -> Setting:
    text = ",".join(str(n) for n in iterations)
    return Setting(key, f"iterative {text}", ["--method", "iterative", "--iterations", text],
                   logic.RegistrationSettings(iterations=tuple(iterations)))


def zoo_setting(logic, name: str) -> Setting:
    card = logic.card_defaults(name)
    return Setting("zoo", f"{name} (card: affine {'on' if card.affine else 'off'}, refine {card.refine_steps})",
                   ["--model", name], logic.RegistrationSettings(model=name, affine=card.affine, refine_steps=None))


def run_cli(setting: Setting, work: Path) -> dict:
    """``python -m metareg.app.cli register`` on the sample pair as a subprocess: wall seconds and its report."""
    out = Path(tempfile.mkdtemp(prefix="cli-", dir=work))
    command = [sys.executable, "-m", "metareg.app.cli", "register",
               "--fixed", str(FILES["fixed"]), "--moving", str(FILES["moving"]),
               "--fixed-landmarks", str(FILES["fixed_landmarks"]), "--moving-landmarks", str(FILES["moving_landmarks"]),
               "--warped", str(out / "warped.nii.gz"), "--field", str(out / "field.nii.gz"),
               "--jacobian", str(out / "jacobian.nii.gz"), "--report", str(out / "report.json"), "--quiet",
               *setting.cli_args]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(MODULE_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cpu = cpu_sample()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=out, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu = cpu_delta(cpu, cpu_sample())
    if done.returncode != 0:
        raise RuntimeError(f"the CLI failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    total = float(report["seconds"]["total"])
    return {"wall_s": wall, "engine_total_s": total, "outside_engine_s": wall - total, **cpu,
            "stages_s": report["seconds"], "device": report.get("device"),
            "tre_after_mm": (report.get("tre_after") or {}).get("mean"), "ncc_after": report.get("ncc_after")}


def run_module(lib, inputs, setting: Setting) -> dict:
    """``start`` → poll until done → ``finish`` in this (slicer-core) process: wall seconds and the parts."""
    cpu = cpu_sample()
    began = time.perf_counter()
    job = lib.start(inputs, setting.module_settings)
    spawned = time.perf_counter()
    first_event = None
    while not job.poll():
        if first_event is None and job.engine:
            first_event = time.perf_counter()
        time.sleep(POLL_SECONDS)
    done = time.perf_counter()
    if first_event is None:  # the "start" line and the end came in the same poll
        first_event = job.ended
    if job.error is not None:
        raise RuntimeError(f"the module's job failed: {job.error}\n{job.error_details[-3000:]}")
    lib.finish(job)
    wall = time.perf_counter() - began
    cpu = cpu_delta(cpu, cpu_sample())
    report = job.result.report
    total = float(report["seconds"]["total"])
    parts = {"start_call_s": spawned - began, "write_inputs_s": job.seconds["write_inputs"],
             "to_start_event_s": first_event - spawned, "engine_total_s": total,
             "read_outputs_s": job.seconds["read_outputs"], "create_nodes_s": job.seconds["create_nodes"]}
    parts["worker_rest_s"] = (done - first_event) - total - parts["read_outputs_s"]
    return {"wall_s": wall, "to_done_s": done - began, "outside_engine_s": wall - total, **parts, **cpu,
            "stages_s": report["seconds"], "device": report.get("device"),
            "tre_after_mm": (report.get("tre_after") or {}).get("mean"), "ncc_after": report.get("ncc_after")}


def measure_overhead(lib, fresh_inputs, setting: Setting, repeats: int, work: Path) -> dict:
    """CLI and module path alternating; ``fresh_inputs()`` gives the pair's nodes in a freshly loaded scene (each
    module run adds its outputs to the same scene state)."""
    runs = []
    for repeat in range(repeats):
        order = ("cli", "module") if repeat % 2 == 0 else ("module", "cli")
        run = {"order": list(order)}
        for path in order:
            print(f"  {setting.key} repeat {repeat + 1}/{repeats}: {path} ...", flush=True)
            run[path] = run_cli(setting, work) if path == "cli" else run_module(lib, fresh_inputs(), setting)
            print(f"    {run[path]['wall_s']:.2f} s (engine {run[path]['engine_total_s']:.2f} s)", flush=True)
        run["difference_s"] = run["module"]["wall_s"] - run["cli"]["wall_s"]
        run["outside_engine_difference_s"] = run["module"]["outside_engine_s"] - run["cli"]["outside_engine_s"]
        runs.append(run)
    module_parts = ("start_call_s", "write_inputs_s", "to_start_event_s", "engine_total_s", "read_outputs_s",
                    "create_nodes_s", "worker_rest_s")
    return {
        "setting": setting.title,
        "cli_args": setting.cli_args,
        "cli_wall_s": summary(r["cli"]["wall_s"] for r in runs),
        "cli_engine_total_s": summary(r["cli"]["engine_total_s"] for r in runs),
        "cli_outside_engine_s": summary(r["cli"]["outside_engine_s"] for r in runs),
        "module_wall_s": summary(r["module"]["wall_s"] for r in runs),
        "module_outside_engine_s": summary(r["module"]["outside_engine_s"] for r in runs),
        "module_parts": {name: summary(r["module"][name] for r in runs) for name in module_parts},
        "difference_s": summary(r["difference_s"] for r in runs),
        "median_difference_s": median(r["difference_s"] for r in runs),
        "outside_engine_difference_s": summary(r["outside_engine_difference_s"] for r in runs),
        "median_outside_engine_difference_s": median(r["outside_engine_difference_s"] for r in runs),
        "ratio_module_cli": summary(r["module"]["wall_s"] / r["cli"]["wall_s"] for r in runs),
        "cli_others_cores": summary(r["cli"]["others_cores"] for r in runs),
        "module_others_cores": summary(r["module"]["others_cores"] for r in runs),
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Cancel latency


def wait_for_message(job, words: str, timeout: float = 1800.0) -> str:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        message = job.progress[1]
        if words in message:
            return message
        if job.done:
            raise RuntimeError(f"the job ended before '{words}' (last message {message!r}, error {job.error})")
        time.sleep(0.01)
    raise RuntimeError(f"no progress message with '{words}' within {timeout} s")


def cancel_once(lib, inputs, settings, words: str) -> dict:
    job = lib.start(inputs, settings)
    message = wait_for_message(job, words)
    cancelled_at = time.perf_counter()
    job.cancel()
    while not job.poll():
        time.sleep(CANCEL_POLL_SECONDS)
    latency = time.perf_counter() - cancelled_at
    if not job.cancelled:
        raise RuntimeError(f"the job did not end as cancelled (error {job.error})")
    code = job.process.returncode
    return {"latency_s": latency, "message": message, "returncode": code, "killed": code == -9,
            "folder_removed": not job.folder.exists()}


def measure_cancel(lib, inputs, settings, words: str, repeats: int, title: str) -> dict:
    runs = []
    for repeat in range(repeats):
        print(f"  cancel {title} {repeat + 1}/{repeats} ...", flush=True)
        runs.append(cancel_once(lib, inputs, settings, words))
        print(f"    {runs[-1]['latency_s'] * 1000:.0f} ms (exit status {runs[-1]['returncode']})", flush=True)
    latencies = [r["latency_s"] for r in runs]
    return {"setting": title, "wait_for": words, "latency_s": summary(latencies), "median_s": median(latencies),
            "max_s": max(latencies), "runs": runs}


# ---------------------------------------------------------------------------------------------------------------------
# The GIL test and the thread simulation


def _usleep():
    usleep = ctypes.PyDLL("libc.so.6").usleep  # PyDLL: the GIL stays held during the call
    usleep.argtypes = [ctypes.c_uint]
    return usleep


def gil_once(lib, inputs, settings, held: bool) -> dict:
    cpu = cpu_sample()
    began = time.perf_counter()
    job = lib.start(inputs, settings)
    if held:
        usleep = _usleep()
        while not job.done:
            usleep(HOLD_PERIOD_US)
    else:
        job.wait()
    seconds = time.perf_counter() - began
    cpu = cpu_delta(cpu, cpu_sample())
    if job.error is not None:
        raise RuntimeError(f"the GIL test's job failed: {job.error}\n{job.error_details[-3000:]}")
    return {"seconds": seconds, "engine_total_s": float(job.result.report["seconds"]["total"]),
            "ncc_after": job.result.report.get("ncc_after"), **cpu}


def measure_gil(lib, inputs, setting: Setting, repeats: int) -> dict:
    runs = []
    for repeat in range(repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        run = {}
        for held in order:
            print(f"  GIL test {repeat + 1}/{repeats}: {'held' if held else 'free'} ...", flush=True)
            run["held" if held else "free"] = gil_once(lib, inputs, setting.module_settings, held)
        run["ratio"] = run["held"]["seconds"] / run["free"]["seconds"]
        print(f"    free {run['free']['seconds']:.2f} s, held {run['held']['seconds']:.2f} s: "
              f"ratio {run['ratio']:.2f}", flush=True)
        runs.append(run)
    ratios = [r["ratio"] for r in runs]
    return {"setting": setting.title, "hold_period_ms": HOLD_PERIOD_US / 1000,
            "free_s": summary(r["free"]["seconds"] for r in runs),
            "held_s": summary(r["held"]["seconds"] for r in runs),
            "free_others_cores": summary(r["free"]["others_cores"] for r in runs),
            "held_others_cores": summary(r["held"]["others_cores"] for r in runs),
            "free_worker_cpu_s": summary(r["free"]["child_cpu_s"] for r in runs),
            "held_worker_cpu_s": summary(r["held"]["child_cpu_s"] for r in runs),
            "ratio": summary(ratios), "median_ratio": median(ratios), "runs": runs}


def _spin(chunks: int, stop: threading.Event, counter: list) -> None:
    """Pure-Python CPU work (the GIL is needed for every bytecode): ``chunks`` chunks of integer arithmetic."""
    for _ in range(chunks):
        if stop.is_set():
            return
        x = 0
        for k in range(SIMULATION_CHUNK):
            x += (k * k) % 7
        counter[0] += 1


def simulate_thread_engine(seconds: float = SIMULATION_SECONDS, cap: float = SIMULATION_CAP_SECONDS) -> dict:
    """A CPU-bound pure-Python 'engine' in a thread: free main thread (join) vs main thread in the usleep loop."""
    calibration = time.perf_counter()
    _spin(20, threading.Event(), [0])
    per_chunk = (time.perf_counter() - calibration) / 20
    chunks = max(int(seconds / per_chunk), 20)

    counter, stop = [0], threading.Event()
    worker = threading.Thread(target=_spin, args=(chunks, stop, counter))
    began = time.perf_counter()
    worker.start()
    worker.join()
    free = time.perf_counter() - began

    counter, stop = [0], threading.Event()
    worker = threading.Thread(target=_spin, args=(chunks, stop, counter))
    usleep = _usleep()
    began = time.perf_counter()
    worker.start()
    while worker.is_alive() and time.perf_counter() - began < cap:
        usleep(HOLD_PERIOD_US)
    elapsed = time.perf_counter() - began
    finished = not worker.is_alive()
    stop.set()
    worker.join()
    done_chunks = max(counter[0], 1)
    held = elapsed if finished else elapsed * chunks / done_chunks
    return {"chunks": chunks, "free_s": free, "held_s": held, "held_extrapolated": not finished,
            "held_measured_s": elapsed, "held_chunks_done": counter[0], "ratio": held / free,
            "switch_interval_s": sys.getswitchinterval(), "hold_period_ms": HOLD_PERIOD_US / 1000}


# ---------------------------------------------------------------------------------------------------------------------
# The table


def row(measurement: str, setting: str, stats: dict | None = None, unit: str = "s", value=None) -> dict:
    if stats is None:
        stats = {"median": value, "min": value, "max": value, "n": 1, "values": [value]}
    return {"measurement": measurement, "setting": setting, "median": stats["median"], "min": stats["min"],
            "max": stats["max"], "unit": unit, "n": stats["n"],
            "values": ", ".join(f"{v:.3f}" for v in stats["values"])}


def table_rows(overhead: dict, cancel: dict, gil: dict, simulation: dict) -> list[dict]:
    rows = []
    names = {"start_call_s": "module: start() call (read nodes, write inputs, spawn)",
             "write_inputs_s": "module: of which write_inputs (.mha)",
             "to_start_event_s": "module: process start → \"start\" event",
             "engine_total_s": "module: engine total (report)",
             "read_outputs_s": "module: read_outputs",
             "create_nodes_s": "module: create_nodes (finish)",
             "worker_rest_s": "module: worker rest (torch import, .mha I/O, exit)"}
    for result in overhead.values():
        setting = result["setting"]
        rows += [row("CLI wall", setting, result["cli_wall_s"]),
                 row("CLI: engine total (report)", setting, result["cli_engine_total_s"]),
                 row("CLI: outside the engine (start, imports, .nii.gz I/O)", setting, result["cli_outside_engine_s"]),
                 row("module wall (start → done → finish)", setting, result["module_wall_s"]),
                 row("module: outside the engine (wall − engine total)", setting, result["module_outside_engine_s"]),
                 row("module − CLI, wall (paired)", setting, result["difference_s"]),
                 row("module / CLI, wall (paired)", setting, result["ratio_module_cli"], unit="x"),
                 row("module − CLI, outside the engine (paired)", setting, result["outside_engine_difference_s"]),
                 row("machine: other processes' CPU during the CLI runs", setting, result["cli_others_cores"],
                     unit="cores"),
                 row("machine: other processes' CPU during the module runs", setting, result["module_others_cores"],
                     unit="cores")]
        rows += [row(names[name], setting, stats) for name, stats in result["module_parts"].items()]
    for result in cancel.values():
        rows.append(row("cancel latency (cancel() → done)", result["setting"], result["latency_s"]))
    rows += [row("GIL test: free main thread (job.wait)", gil["setting"], gil["free_s"]),
             row("GIL test: main thread holds the GIL (100 ms usleep)", gil["setting"], gil["held_s"]),
             row("GIL test: ratio held / free", gil["setting"], gil["ratio"], unit="x"),
             row("GIL test: worker CPU, free", gil["setting"], gil["free_worker_cpu_s"]),
             row("GIL test: worker CPU, held", gil["setting"], gil["held_worker_cpu_s"]),
             row("GIL test: other processes' CPU during the free runs", gil["setting"], gil["free_others_cores"],
                 unit="cores"),
             row("GIL test: other processes' CPU during the held runs", gil["setting"], gil["held_others_cores"],
                 unit="cores")]
    sim = f"pure-Python thread, {simulation['chunks']} chunks"
    rows += [row("thread simulation: free main thread (join)", sim, value=simulation["free_s"]),
             row("thread simulation: main thread holds the GIL" + (" (extrapolated)" if simulation["held_extrapolated"]
                                                                    else ""), sim, value=simulation["held_s"]),
             row("thread simulation: ratio held / free", sim, value=simulation["ratio"], unit="x")]
    return rows


def out_paths(stem: str) -> tuple[Path, str]:
    path = Path(stem)
    if path.parent == Path("."):
        return RESULTS, path.name
    return path.parent, path.name


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, threads=2, threads_help="CPU threads of both paths' child processes (default 2)",
                              quick="1 repeat, iterative 4,2,1 only, no zoo rows, one cancel (smoke test; needs "
                                    "--out DIR/STEM)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every measurement (default 3; quick 1)")
    parser.add_argument("--out", default=None, metavar="STEM",
                        help=f"result files STEM.{{csv,md,json}}: a bare name goes into benchmarks/results/ "
                             f"(default {DEFAULT_STEM}); a path into its folder")
    args = parser.parse_args(argv)
    if args.quick and (args.out is None or Path(args.out).parent == Path(".")):
        parser.error("--quick needs --out DIR/STEM (quick results never go into benchmarks/results)")
    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    out_dir, stem = out_paths(args.out or DEFAULT_STEM)

    load_before = uptime()
    print(f"load before: {load_before}", flush=True)
    set_threads(args.threads)  # os.environ: both the CLI subprocess and the module's worker inherit it
    env = environment(args.threads, argv)

    try:
        from MetaRegistrationLib import headless, logic, sampledata
    except ModuleNotFoundError as error:
        if error.name != "MetaRegistrationLib":
            raise
        raise SystemExit(f"the Slicer module's MetaRegistrationLib is not on the path: install the project editable "
                         f"(`pip install -e .`, as ./run does), which puts {MODULE_DIR} on it") from None

    app = headless.get_app()

    def fresh_inputs():
        headless.clear_scene()
        data = sampledata.load_brain3d(app.scene, SAMPLES)
        return logic.RegistrationInputs(data.fixed_volume, data.moving_volume, data.fixed_landmarks,
                                        data.moving_landmarks)

    inputs = fresh_inputs()
    lib = logic.MetaRegistrationLogic(app.scene)

    fast = iterative_setting(logic, QUICK_ITERATIONS if args.quick else FAST_ITERATIONS)
    settings = [fast]
    zoo_name = None
    if not args.quick:
        zoo_name = logic.smallest_zoo_model()
        if zoo_name is None:
            raise SystemExit("the zoo has no 3D T1w model (models/index.json); cannot run the zoo rows")
        settings.insert(0, zoo_setting(logic, zoo_name))

    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="slicer-module-bench-"))
    try:
        if not args.quick:
            print("warm-up (untimed) ...", flush=True)
            warm = iterative_setting(logic, WARMUP_ITERATIONS, key="warm-up")
            run_cli(warm, work)
            run_module(lib, fresh_inputs(), warm)

        print("1. overhead of the module path over the CLI", flush=True)
        overhead = {setting.key: measure_overhead(lib, fresh_inputs, setting, repeats, work) for setting in settings}
        inputs = fresh_inputs()  # the cancel and GIL runs add no nodes (no finish)

        print("2. cancel latency", flush=True)
        slow = ",".join(str(n) for n in SLOW_ITERATIONS)
        cancel = {"iterative": measure_cancel(lib, inputs, logic.RegistrationSettings(iterations=SLOW_ITERATIONS),
                                              "iterative", repeats, f"iterative {slow}, during iterative")}
        if zoo_name is not None:
            cancel["zoo_refinement"] = measure_cancel(
                lib, inputs, logic.RegistrationSettings(model=zoo_name, affine=False, adapt_steps=0,
                                                        refine_steps=CANCEL_REFINE_STEPS),
                "refin", repeats, f"{zoo_name}, refine {CANCEL_REFINE_STEPS}, no affine, during refinement")

        print("3. the GIL test", flush=True)
        gil = measure_gil(lib, inputs, fast, repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("4. thread simulation (the old design)", flush=True)
    simulation = simulate_thread_engine(*((0.5, 3.0) if args.quick else (SIMULATION_SECONDS, SIMULATION_CAP_SECONDS)))
    print(f"    free {simulation['free_s']:.2f} s, held {simulation['held_s']:.2f} s"
          f"{' (extrapolated)' if simulation['held_extrapolated'] else ''}: ratio {simulation['ratio']:.1f}",
          flush=True)

    load_after = uptime()
    print(f"load after: {load_after}", flush=True)
    rows = table_rows(overhead, cancel, gil, simulation)
    devices = sorted({str(r[p]["device"]) for o in overhead.values() for r in o["runs"] for p in ("cli", "module")})
    notes = [
        f"Pair: brain3d sample (Resources/SampleData, 32 landmarks), device {', '.join(devices)}; {repeats} repeat(s), "
        "CLI and module alternating (CLI first in odd repeats); every value is wall seconds (time.perf_counter) "
        "unless the unit says x.",
        "CLI: `python -m metareg.app.cli register ... --warped/--field/--jacobian *.nii.gz --report R.json --quiet` as a "
        "subprocess (compressed NIfTI outputs, as a user writes them). Module: `MetaRegistrationLogic.start()` → "
        f"poll every {POLL_SECONDS * 1000:.0f} ms until done → `finish()` (output nodes created), in slicer-core; "
        "the worker reads and writes uncompressed .mha. Desktop Slicer's GUI timer polls every 100 ms, which adds up "
        "to 0.1 s to the module path.",
        "Overhead: 'module − CLI, wall' is the raw paired difference; on a loaded machine the engine's own time "
        "varies by more than the overhead, so 'module − CLI, outside the engine' (each path's wall minus its own "
        "engine total, paired) is the overhead proper. Each module run starts from a freshly loaded scene (the pair "
        "and its landmarks; loading is not timed).",
        "Module parts: the start() call (reads the nodes, writes the inputs, spawns the worker); process start → the "
        "worker's first JSON event (interpreter start and `import metareg`, before torch); the engine's own total "
        "(its report's seconds.total, same stages as the CLI's); read_outputs; create_nodes; 'worker rest' = the "
        "rest of the time between the first event and the end (importing torch and the engine, reading the .mha "
        "inputs, writing the .mha outputs, process exit, the last poll).",
        f"Cancel latency: cancel() (SIGTERM; SIGKILL after 1 s) → job.done, polled every "
        f"{CANCEL_POLL_SECONDS * 1000:.0f} ms, after the stage's progress message arrived. The worker's exit statuses: "
        + "; ".join(f"{result['setting']}: " + ", ".join(str(r["returncode"]) for r in result["runs"])
                    for result in cancel.values())
        + " (143 = 128 + SIGTERM: the engine's own SIGTERM handler unwound it; -15: SIGTERM's default action; "
        "-9: killed after 1 s).",
        "GIL test: start → done of the fast iterative registration with a free main thread (job.wait) vs the main "
        "thread holding the GIL in 100 ms C calls (ctypes.PyDLL usleep) between polls, as desktop Slicer's main "
        "thread does while Qt idles; the engine in a child process should not care (ratio ~1).",
        f"Thread simulation (the old design's engine thread no longer exists): a pure-Python CPU-bound function in a "
        f"threading.Thread, ~{simulation['free_s']:.1f} s with a free main thread; with the main thread in the same "
        f"usleep loop it got the GIL only for one switch interval ({simulation['switch_interval_s'] * 1000:.0f} ms) "
        f"per 100 ms hold" + (f": stopped after {simulation['held_measured_s']:.1f} s with "
                              f"{simulation['held_chunks_done']}/{simulation['chunks']} chunks done, time extrapolated"
                              if simulation["held_extrapolated"] else "") + ".",
        f"Load during each run: 'other processes' CPU' = the machine's busy CPU time (/proc/stat) minus this "
        f"process's and the run's child process's (getrusage), over the run's wall time, in cores of the "
        f"{os.cpu_count()}; a run slowed by other work shows it there (the worker's own CPU seconds stay put).",
        f"Threads: OMP_NUM_THREADS = MKL_NUM_THREADS = ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS = {args.threads} in the "
        "environment of both paths' child processes.",
        f"Machine load (`uptime`), the machine is shared with other work: before: {load_before}; after: {load_after}.",
    ]
    extra = {"quick": args.quick, "repeats": repeats, "zoo_model": zoo_name, "overhead": overhead,
             "cancel_latency": cancel, "gil": gil, "thread_simulation": simulation,
             "load": {"before": load_before, "after": load_after}, "benchmark_seconds": time.perf_counter() - began}
    title = "Slicer module: engine process overhead over the CLI, cancel latency, GIL test (brain3d)"
    paths = write_results(stem, title, rows, env, notes=notes, extra=extra, out_dir=out_dir)
    print()
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
