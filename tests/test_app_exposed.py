"""``diffinv app`` exposed to visitors (issue 22): bounded numbers, files only under ``--models-dir`` and
``--runs-dir`` (a missing and a forbidden name get the same message; nothing of a file's contents shown), a
closed page or cancelled job stops its run at the next iteration, and one run holds the machine at a time.
Through the Workbench, and through the running app as a visitor would (``gradio_client``, raw HTTP)."""

import os
import shutil
import socket
import threading
import time
import uuid

import pytest
import torch

from diffinv.app.limits import MAX_SEED, Limits, bounded_int, inside
from diffinv.app.runner import RUN_BUSY, WAITING, InvertRequest, Workbench
from diffinv.cli import USER_ERRORS, build_parser
from diffinv.inverters import inverter_spec

pytestmark = pytest.mark.usefixtures("one_thread")
LONG = 100_000  # iterations of a run that only a cancel ends
WEIGHTS_MISSING = (
    "diffinv app: error: `--weights` {!r}: no such weights file in this server's models folder "
    "(--models-dir); expected default, random:SEED or the name of a state-dict file there."
)
RUN_MISSING = (
    "diffinv app: error: `--out` {!r}: no run folder of that name in this server's runs folder "
    "(--runs-dir); expected the name of a `diffinv bench` run folder there."
)


def inverter_factory(method, options):
    """The Workbench's default factory: the registry's inverter for the request's options."""
    return inverter_spec(method, **options).build


class Log:
    """Every inversion's ``(start, end, iterations run)``, from an inverter factory wrapping the registry's."""

    def __init__(self):
        self.runs: list[tuple[float, float, int | None]] = []
        self._lock = threading.Lock()

    def factory(self, method, options):
        make = inverter_factory(method, options)

        def made(target, **extra):
            inverter = make(target, **extra)
            invert = inverter.invert

            def logged(*args, **kwargs):
                start, out = time.monotonic(), None
                try:
                    out = invert(*args, **kwargs)
                    return out
                finally:
                    with self._lock:
                        self.runs.append((start, time.monotonic(), None if out is None else len(out.loss_history)))

            inverter.invert = logged
            return inverter

        return made


def wait_until(condition, seconds: float) -> float:
    """Seconds until ``condition()`` held (fails the test after ``seconds``)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def exposed_roots(tmp_path_factory):
    """``(models, runs, outside)``: the two roots and a folder beside them with what must not be reached."""
    from diffinv.io import sample_images
    from diffinv.jobs.bench import run_benchmark
    from diffinv.targets import TargetNetwork

    base = tmp_path_factory.mktemp("exposed")
    models, runs, outside = base / "models", base / "runs", base / "outside"
    for folder in (models, runs, outside):
        folder.mkdir()
    # weights: a real state dict inside, the same file outside, links in and out, a text file
    target = TargetNetwork.from_name("tf_efficientnet_lite0", ["blocks.1"], weights="random:1", input_size=(32, 32))
    torch.save(target.model.state_dict(), outside / "real.pt")
    shutil.copy(outside / "real.pt", models / "good.pt")
    (models / "inner.pt").symlink_to(models / "good.pt")
    (models / "escape.pt").symlink_to(outside / "real.pt")
    (models / "notes.txt").write_text("Secret notes of the server\n")
    # runs: a bench run inside, one outside, a link out, a folder without a manifest, symlinks out of a run
    (outside / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    make = lambda t: inverter_factory("pixel", InvertRequest(iterations=2).options("cpu"))(t)  # noqa: E731
    run_benchmark(
        target,
        sample_images(["chelsea"], 32),
        ["chelsea"],
        ["blocks.1"],
        {"pixel": make},
        runs / "run",
        progress=False,
    )
    shutil.copytree(runs / "run", outside / "run")
    (runs / "link").symlink_to(outside / "run")
    (runs / "empty").mkdir()
    shutil.copytree(runs / "run", runs / "leaky")
    (runs / "leaky" / "results.md").unlink()
    (runs / "leaky" / "results.md").symlink_to(outside / "secret.txt")
    (runs / "leaky" / "evil.png").symlink_to(outside / "run" / "grid.png")
    (runs / "stolen").mkdir()
    (runs / "stolen" / "manifest.json").symlink_to(outside / "run" / "manifest.json")
    return models, runs, outside


@pytest.fixture(scope="module")
def logged(exposed_roots):
    log = Log()
    limits = Limits(max_size=64, max_iterations=LONG, models_dir=exposed_roots[0], runs_dir=exposed_roots[1])
    return Workbench(log.factory, user_errors=USER_ERRORS, limits=limits, heartbeat_seconds=0.2), log


def small(**kwargs):
    return InvertRequest(
        **{
            "image": "chelsea",
            "layer": "blocks.1",
            "method": "pixel",
            "iterations": 5,
            "size": 32,
            "weights": "random:0",
            **kwargs,
        }
    )


def message(bench, request) -> str:
    (update,) = [u for u in bench.invert(request, bench.session("messages")) if not u.heartbeat]
    assert update.error and update.done
    return update.message


# ---------------------------------------------------------------------- bounds
def test_bounded_int_names_the_flag_and_never_overflows():
    assert bounded_int(7.0, "--seed", 0, 9) == 7 and bounded_int("3", "--seed", 0, 9) == 3
    for bad, shown in [
        (10**30, "a number above 10**18"),
        (-(10**30), "-a number above 10**18"),
        (1e300, "1e+300"),
        (float("inf"), "inf"),
        (float("nan"), "nan"),
        (1.5, "1.5"),
        ("1e3", "'1e3'"),
        (None, "None"),
        (True, "True"),
        ("9" * 5000, "'" + "9" * 56 + "..."),
    ]:
        with pytest.raises(ValueError) as err:
            bounded_int(bad, "--seed", 0, 9, "why")
        assert str(err.value) == f"`--seed` expected an integer from 0 to 9 (why), got {shown}"


def test_fields_out_of_bounds_get_the_flag_the_value_and_the_bound(logged):
    bench, _ = logged
    size = "`--size` expected an integer from 11 to 64 (this server's --max-size), got {}"
    iterations = f"`--iterations` expected an integer from 1 to {LONG} (this server's --max-iterations), got {{}}"
    seed = f"`--seed` expected an integer from 0 to {MAX_SEED} (2**32 - 1), got {{}}"
    cases = [
        (small(size=65), size.format(65)),
        (small(size=100000), size.format(100000)),
        (small(iterations=10**9), iterations.format(10**9)),
        (small(iterations=0), iterations.format(0)),
        (small(seed=10**30), seed.format("a number above 10**18")),
        (small(seed=-1), seed.format(-1)),
        (small(seed=MAX_SEED + 1), seed.format(MAX_SEED + 1)),
        (small(seed=float("nan")), seed.format("nan")),
        (small(steps=10**6), "`--steps` expected an integer from 1 to 100, got 1000000"),
        (
            small(weights=f"random:{10**30}"),
            f"`--weights random:SEED` expected an integer from 0 to {MAX_SEED} (the seed), got a number above 10**18",
        ),
        (
            small(image="/etc/passwd"),
            "`--images` '/etc/passwd': expected one of the bundled photos (chelsea, "
            "coffee, astronaut, rocket, hubble_deep_field, immunohistochemistry) or "
            "an upload.",
        ),
    ]
    for request, expected in cases:
        assert message(bench, request) == f"diffinv app: error: {expected}"
    (update,) = list(bench.depth(small(size=10**6), bench.session("messages")))
    assert update.message == f"diffinv app: error: {size.format(10**6)}"
    with pytest.raises(
        ValueError, match=r"^`--top` expected an integer from 1 to 16 \(this server's bound\), got 17$"
    ):
        bench.channels(small(), top=17)
    capped = Workbench(inverter_factory, limits=Limits(max_iterations=50), channel_visualizer=lambda *a: [])
    with pytest.raises(
        ValueError,
        match=r"^`--iterations` 20 x `--top` 3: the Channels tab optimizes one image "
        r"per channel, and 60 image-iterations are above this server's "
        r"--max-iterations 50",
    ):
        capped.channels(small(iterations=20), top=3)
    assert capped.channels(small(iterations=10), top=5).note == "Channels shown by the connected visualizer."
    last = list(bench.invert(small(seed=MAX_SEED), bench.session("messages")))[-1]
    assert last.message.startswith("done") and not bench.session("messages").busy
    assert list(capped.invert(small(iterations=None), capped.session("x")))[-1].message == (
        "diffinv app: error: `--iterations`: the method's default, 300, is above this server's "
        "--max-iterations 50; enter a number of iterations."
    )


def test_a_job_that_does_not_fit_in_memory_is_refused_before_work(logged, monkeypatch):
    from diffinv import resources

    monkeypatch.setattr(resources, "_host_available", lambda: 2**20)  # 1 MiB free
    bench, log = logged
    before = len(log.runs)
    text = message(bench, small())
    assert text.startswith("diffinv app: error: the job needs an estimated") and "available" in text
    assert len(log.runs) == before  # refused before any inversion ran


def test_cli_flags_bound_the_app_and_root_its_files(tmp_path):
    args = build_parser().parse_args(["app"])
    assert (args.max_size, args.max_iterations) == (512, 1000)
    assert args.models_dir == args.runs_dir == type(args.runs_dir)(os.path.realpath("."))
    args = build_parser().parse_args(
        [
            "app",
            "--max-size",
            "256",
            "--max-iterations",
            "50",
            "--models-dir",
            str(tmp_path),
            "--runs-dir",
            str(tmp_path),
        ]
    )
    assert (args.max_size, args.max_iterations, args.models_dir) == (256, 50, tmp_path.resolve())
    for bad in (["--max-size", "0"], ["--max-iterations", "-5"], ["--runs-dir", str(tmp_path / "nope")]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["app", *bad])


# ---------------------------------------------------------------------- files only under the roots
def test_weights_come_only_from_the_models_folder_and_never_show_a_file(logged, exposed_roots):
    bench, _ = logged
    models, _, outside = exposed_roots
    for name in (
        "nothing.pt",
        "../outside/real.pt",
        str(outside / "real.pt"),
        "escape.pt",
        "/etc/passwd",
        "..",
        "models/../../outside/real.pt",
    ):
        assert message(bench, small(weights=name)) == WEIGHTS_MISSING.format(name)
    text = message(bench, small(weights="notes.txt"))
    assert text == (
        "diffinv app: error: `--weights` 'notes.txt': could not be loaded as the state dict of "
        "'tf_efficientnet_lite0' (ValueError); expected a file written by "
        "torch.save(model.state_dict()) for this target."
    )
    reference = bench.target("tf_efficientnet_lite0", "random:1", 32, ("blocks.1",)).weights_fingerprint()
    for name in ("good.pt", "inner.pt", str(models / "good.pt")):
        assert bench.target("tf_efficientnet_lite0", name, 32, ("blocks.1",)).weights_fingerprint() == reference
    assert list(bench.invert(small(weights="inner.pt"), bench.session("w")))[-1].message.startswith("done")
    folder = (
        "diffinv app: error: `--decoder` {!r}: no such folder in this server's models folder (--models-dir); "
        "expected the name of a folder there."
    )
    assert message(bench, small(method="decoder", decoder="../outside")) == folder.format("../outside")
    assert message(bench, small(method="decoder", decoder="good.pt")) == folder.format("good.pt")
    assert message(bench, small(method="diffusion", model="/tmp")) == (
        "diffinv app: error: `--model` '/tmp': no such folder in this server's models folder (--models-dir); "
        "expected tiny, sd15, sd-turbo or the name of a folder there."
    )
    (models / "not-a-decoder").mkdir(exist_ok=True)  # the CLI's message, with the folder as the visitor named it
    text = message(bench, small(method="decoder", decoder="not-a-decoder"))
    assert "'not-a-decoder'" in text and str(models.resolve()) not in text and str(models) not in text
    nothing = Workbench(inverter_factory)  # no --models-dir: no files at all
    assert message(nothing, small(weights="good.pt")) == WEIGHTS_MISSING.format("good.pt")
    assert inside(None, "x") is None and inside(models, "") is None and inside(models, "a\x00b") is None


def test_runs_tab_serves_only_run_folders_under_the_runs_folder(logged, exposed_roots):
    bench, _ = logged
    _, runs, outside = exposed_roots
    view = bench.open_run("run")
    assert "| blocks.1 | pixel |" in view.table and len(view.records) == 1 and view.grid.name == "grid.png"
    for name in (
        "missing",
        "../outside/run",
        str(outside / "run"),
        "link",
        "empty",
        "stolen",
        "run/manifest.json",
        "/etc",
        "run/../../outside/run",
    ):
        with pytest.raises(ValueError) as err:
            bench.open_run(name)
        assert f"diffinv app: error: {err.value}" == RUN_MISSING.format(name)
    leaky = bench.open_run("leaky")  # results.md -> a file outside: not served; evil.png -> outside: not served
    assert "root:" not in leaky.table and leaky.table.startswith("_No results.md yet")
    assert [p.name for p in leaky.plots] == ["psnr_vs_depth.png"] and len(leaky.records) == 1
    (runs / "broken").mkdir(exist_ok=True)
    (runs / "broken" / "manifest.json").write_bytes(b"\x89secret bytes")
    with pytest.raises(ValueError, match=r"^`--out` 'broken': its manifest.json could not be read as JSON"):
        bench.open_run("broken")
    with pytest.raises(ValueError) as err:
        Workbench(inverter_factory).open_run("run")  # no --runs-dir: nothing served
    assert f"diffinv app: error: {err.value}" == RUN_MISSING.format("run")


# ---------------------------------------------------------------------- cancel and one run at a time (Workbench)
def test_closing_the_updates_cancels_and_the_next_run_waits_for_it(logged):
    bench, log = logged
    before = len(log.runs)
    first = bench.invert(small(iterations=LONG), bench.session("first"))
    while not next(first).images[1:]:
        pass  # until the first reconstruction is shown: the run is working
    second = bench.invert(small(), bench.session("second"))
    assert next(second).message == WAITING and bench.running
    first.close()  # the page is closed: Gradio closes the handler's generator
    updates = list(second)
    assert updates[-1].message.startswith("done: pixel at blocks.1") and not bench.running
    (a_start, a_end, a_iterations), (b_start, _, b_iterations) = log.runs[before:]
    assert a_end <= b_start and a_iterations < LONG and b_iterations == 5
    assert not bench.session("first").busy and not bench.session("second").busy


def test_a_run_that_waits_too_long_is_refused_as_busy(logged):
    bench, log = logged
    impatient = Workbench(log.factory, limits=bench.limits, wait_seconds=0.3, heartbeat_seconds=0.1)
    first = impatient.invert(small(iterations=LONG), impatient.session("first"))
    while not next(first).images[1:]:
        pass
    updates = list(impatient.invert(small(), impatient.session("second")))
    assert updates[-1].error and updates[-1].message == RUN_BUSY and not impatient.session("second").busy
    with pytest.raises(Exception, match="another visitor's run"):
        impatient.channels(small(), top=1)
    first.close()
    wait_until(lambda: not impatient.running, 5)


# ---------------------------------------------------------------------- the running app, as a visitor
@pytest.fixture(scope="module")
def exposed_server(exposed_roots):
    pytest.importorskip("gradio")
    from diffinv.app.ui import build_app
    from diffinv.cli.app import workbench

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Log()
    bench = workbench(
        "cpu", Limits(max_size=64, max_iterations=LONG, models_dir=exposed_roots[0], runs_dir=exposed_roots[1])
    )
    bench.inverter_factory = log.factory
    demo = build_app(bench)
    demo.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, ssr_mode=False, quiet=True
    )
    invert_index = next(i for i, fn in demo.fns.items() if fn.api_name == "invert")
    yield f"http://127.0.0.1:{port}/", bench, log, invert_index
    demo.close()


def fields(iterations=5, size=32, seed=0, weights="random:0"):
    return [
        "chelsea",
        None,
        "tf_efficientnet_lite0",
        weights,
        "blocks.1",
        "pixel",
        None,
        "",
        "",
        iterations,
        size,
        seed,
    ]


def test_visitor_gets_bounds_and_root_messages_in_the_page(exposed_server):
    from gradio_client import Client

    url, *_ = exposed_server
    client = Client(url, verbose=False)
    for values, expected in [
        (fields(size=100000), "`--size` expected an integer from 11 to 64 (this server's --max-size), got 100000"),
        (
            fields(iterations=10**9),
            f"`--iterations` expected an integer from 1 to {LONG} (this server's --max-iterations), got 1000000000",
        ),
        (fields(seed=1e30), f"`--seed` expected an integer from 0 to {MAX_SEED} (2**32 - 1), got 1e+30"),
        (fields(seed=2.5), f"`--seed` expected an integer from 0 to {MAX_SEED} (2**32 - 1), got 2.5"),
        (
            fields(weights="../outside/real.pt"),
            WEIGHTS_MISSING.format("../outside/real.pt").removeprefix("diffinv app: error: "),
        ),
    ]:
        status, *_ = client.predict(*values, api_name="/invert")
        assert status == f"**diffinv app: error: {expected}**"
    status, *_ = client.predict(*fields(weights="notes.txt"), api_name="/invert")
    assert "(ValueError)" in status and "83" not in status and "Secret" not in status
    missing, *_ = client.predict("missing", api_name="/open_run")
    forbidden, *_ = client.predict("../outside/run", api_name="/open_run")
    assert missing == f"**{RUN_MISSING.format('missing')}**"
    assert forbidden == f"**{RUN_MISSING.format('../outside/run')}**"
    status, table, *_ = client.predict("leaky", api_name="/open_run")
    assert status == "leaky: 1 records" and "root:" not in table and "/" not in status


def test_cancelled_job_stops_its_run_and_the_next_starts(exposed_server):
    from gradio_client import Client

    url, bench, log, _ = exposed_server
    client = Client(url, verbose=False)
    before = len(log.runs)
    job = client.submit(*fields(iterations=LONG), api_name="/invert")
    wait_until(lambda: bench.running and any("running:" in str(o[0]) for o in job.outputs()), 60)
    job.cancel()
    assert wait_until(lambda: not bench.running, 5) < 5
    assert log.runs[before][2] < LONG
    status, gallery, *_ = client.predict(*fields(), api_name="/invert")
    assert status.startswith("done: pixel at blocks.1") and len(gallery) == 2


def test_closed_page_stops_its_run(exposed_server):
    import httpx

    url, bench, log, invert_index = exposed_server
    before = len(log.runs)
    session = uuid.uuid4().hex
    join = httpx.post(
        f"{url}gradio_api/queue/join",
        json={
            "data": fields(iterations=LONG),
            "fn_index": invert_index,
            "session_hash": session,
            "event_data": None,
            "trigger_id": None,
        },
        timeout=30,
    )
    join.raise_for_status()
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=60) as stream:
        for line in stream.iter_lines():
            if "process_generating" in line and "running:" in line:
                break  # the run streams its reconstruction; now the visitor closes the page
    assert bench.running
    assert wait_until(lambda: not bench.running, 5) < 5
    assert log.runs[before][2] < LONG


def test_one_run_at_a_time_across_visitors(exposed_server):
    from gradio_client import Client

    url, bench, log, _ = exposed_server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    before = len(log.runs)
    long_job = first.submit(*fields(iterations=LONG), api_name="/invert")
    wait_until(lambda: bench.running and any("running:" in str(o[0]) for o in long_job.outputs()), 60)
    short_job = second.submit(*fields(), api_name="/invert")
    time.sleep(1.0)
    assert not short_job.done() and len(log.runs) == before  # the second visitor waits
    long_job.cancel()
    status, *_ = short_job.result(timeout=60)
    assert status.startswith("done: pixel at blocks.1")
    (_, long_end, long_iterations), (short_start, _, short_iterations) = log.runs[before : before + 2]
    assert long_end <= short_start and long_iterations < LONG and short_iterations == 5
