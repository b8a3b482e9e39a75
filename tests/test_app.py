"""``diffinv app``: the Workbench (no Gradio), the running app through ``gradio_client``, and the page in
a real headless Chromium driven by Playwright (skipped only where Debian's ``chromium`` is absent;
``.ci/run`` installs it)."""

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from diffinv.app.limits import Limits
from diffinv.app.runner import BUSY, InvertRequest, Workbench, error_message
from diffinv.cli import USER_ERRORS, build_parser
from diffinv.inverters import build_inverter, inverter_spec

pytestmark = pytest.mark.usefixtures("one_thread")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return Workbench(
        user_errors=USER_ERRORS,
        work_dir=tmp_path_factory.mktemp("app"),
        limits=Limits(runs_dir=tmp_path_factory.mktemp("runs"), targets=("tf_efficientnet_lite0", "resnet18")),
    )


def small(**kwargs):
    return InvertRequest(
        **{"image": "chelsea", "layer": "blocks.2", "method": "pixel", "iterations": 12, "size": 64, **kwargs}
    )


# ---------------------------------------------------------------------- Workbench (no Gradio)
def test_invert_streams_images_and_loss_then_metrics(bench):
    updates = list(bench.invert(small(), bench.session("a")))
    running, last = updates[:-1], updates[-1]
    assert len(running) >= 5 and all(len(u.images) == 2 for u in running)
    assert [i for i, _ in running[-1].losses] == list(range(1, len(running[-1].losses) + 1))
    assert last.done and not last.error and last.message.startswith("done: pixel at blocks.2")
    assert last.images[1][0].shape == (64, 64, 3) and last.images[1][0].dtype.name == "uint8"
    assert len(last.losses) == 12 and last.losses[-1][1] < last.losses[0][1]
    assert set(last.metrics) >= {"psnr", "ssim", "feature_residual", "top1_agreement", "class_original"}
    assert 5 < last.metrics["psnr"] < 40 and last.metrics["top1_agreement"] in (0.0, 1.0)
    assert not bench.session("a").busy


def test_cancel_stops_early_keeping_the_best_iterate(bench):
    session = bench.session("cancel")
    updates = []
    for update in bench.invert(small(iterations=400), session):
        updates.append(update)
        if len(updates) == 2:
            session.cancel.set()
    last = updates[-1]
    assert last.done and last.message.startswith("cancelled after") and "best iterate kept" in last.message
    assert len(last.losses) < 50 and last.metrics["psnr"] > 0


def test_one_run_per_session_and_errors_as_the_cli_says_them(bench):
    session = bench.session("busy")
    session.claim()
    try:
        (update,) = list(bench.invert(small(), session))
        assert update.error and update.message == BUSY
    finally:
        session.release()
    (update,) = list(bench.invert(small(method="decoder"), session))
    with pytest.raises(ValueError, match="method 'decoder' needs `decoder`") as err:
        inverter_spec("decoder", **small(method="decoder").options())
    assert update.error and update.message == f"diffinv app: error: {err.value}" and "--" not in update.message
    (update,) = list(bench.invert(small(iterations=0), session))
    assert update.message == (
        "diffinv app: error: `--iterations` expected an integer from 1 to 1000 (this server's --max-iterations), got 0"
    )
    (update,) = list(bench.depth(small(target="resnet18", weights="random:0"), session))
    assert "has no default layers" in update.message and "Traceback" not in update.message
    assert error_message(RuntimeError("boom"), USER_ERRORS) == "diffinv app: error: RuntimeError: boom"
    assert not session.busy


def test_depth_inverts_every_default_layer_and_plots_psnr(bench):
    updates = list(bench.depth(small(iterations=4), bench.session("depth")))
    last = updates[-1]
    assert last.done and last.message == "done: 4 of 4 layers"
    assert [r["layer"] for r in last.records] == ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert [c for _, c in last.images][0] == "original (chelsea)" and len(last.images) == 5
    assert Path(last.plot).is_file() and Path(last.plot).stat().st_size > 5000


def test_channels_ranked_by_mean_activation_with_a_hook_for_visualizations(bench):
    upload = np.zeros((40, 90, 3), np.uint8)
    upload[:, 45:] = 255
    assert bench.channels(small(image=upload, size=32), top=2).maps[0][0].shape == (32, 32, 3)
    view = bench.channels(small(), top=5)
    strengths = [s for _, s in view.ranking]
    assert len(view.ranking) == 5 and strengths == sorted(strengths, reverse=True)
    assert len(view.maps) == 5 and view.maps[0][0].shape == (64, 64, 3)
    # each channel's per-channel inversion, then its feature visualization (diffinv.interpret)
    assert len(view.visualizations) == 10 and view.visualizations[0][0].shape == (64, 64, 3)
    assert [c for c, _ in view.ranking] == [int(cap.split()[1]) for _, cap in view.visualizations[:5]]
    assert "alone (pixel)" in view.visualizations[0][1] and "visualized" in view.visualizations[5][1]
    calls = []
    hooked = Workbench(channel_visualizer=lambda *a: calls.append(a) or [("img", "c")])
    assert hooked.channels(small(), top=3).visualizations == [("img", "c")]
    assert calls[0][1] == "blocks.2" and calls[0][2] == [c for c, _ in hooked.channels(small(), top=3).ranking]


def test_open_run_shows_a_bench_folder_and_refuses_others(bench):
    from diffinv.io import sample_images
    from diffinv.jobs.bench import run_benchmark
    from diffinv.targets import TargetNetwork

    target = TargetNetwork.from_name("tf_efficientnet_lite0", ["blocks.1", "blocks.2"], input_size=(32, 32))
    run_benchmark(
        target,
        sample_images(["chelsea"], 32),
        ["chelsea"],
        ["blocks.1", "blocks.2"],
        {"pixel": lambda t: build_inverter("pixel", t, **small(iterations=2).options())},
        bench.limits.runs_dir / "run",
        progress=False,
    )
    view = bench.open_run("run")
    assert "| blocks.1 | pixel |" in view.table and len(view.records) == 2
    assert view.grid.name == "grid.png" and [p.name for p in view.plots] == ["psnr_vs_depth.png"]
    for name in (".", "missing"):  # the runs folder itself holds no manifest
        with pytest.raises(ValueError, match=f"^`--out` '{name}': no run folder of that name in this server's runs"):
            bench.open_run(name)


def test_inverter_callback_sees_each_iteration_renders_and_stops(lite0_64px, photos_64px):
    from diffinv.features import FeatureSet
    from diffinv.inverters import DIPInverter

    seen = []

    def callback(i, per_image, render):
        seen.append((i, tuple(per_image.shape), tuple(render().shape)))
        return i == 2

    feats = FeatureSet.extract(lite0_64px, photos_64px[:2], "blocks.1")
    out = DIPInverter(lite0_64px, iterations=50)(feats, progress=False, callback=callback)
    assert seen == [(i, (2,), (2, 3, 64, 64)) for i in range(3)] and len(out.loss_history) == 3


def test_cli_defaults_are_local_and_private():
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["app", "--port", "0"])


# ---------------------------------------------------------------------- the running app
@pytest.fixture(scope="module")
def app_url():
    pytest.importorskip("gradio")
    from diffinv.cli.app import build

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build("cpu")
    demo.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, ssr_mode=False, quiet=True
    )
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_api_with_gradio_client(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    assert {"/invert", "/depth", "/channels", "/open_run", "/cancel"} <= set(
        client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    )
    job = client.submit(
        "coffee",
        None,
        "tf_efficientnet_lite0",
        "default",
        "blocks.1",
        "pixel",
        None,
        "",
        "",
        10,
        64,
        0,
        api_name="/invert",
    )
    status, gallery, losses, metrics = job.result(timeout=120)
    assert status.startswith("done: pixel at blocks.1") and len(gallery) == 2
    assert len(losses["data"]) == 10 and "| PSNR (dB) |" in metrics and "| top-1 agreement |" in metrics
    status, *_ = client.predict(
        "coffee",
        None,
        "tf_efficientnet_lite0",
        "default",
        "blocks.1",
        "mapper",
        None,
        "",
        "",
        10,
        64,
        0,
        api_name="/invert",
    )
    assert status == (
        "**diffinv app: error: method 'mapper' needs `mapper`: a trained mapper or its folder (from "
        "`diffinv train-mapper`).**"
    )


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_in_headless_chromium(app_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    outside = []

    def offline(route):  # the page must work with nothing but the app's own server
        url = route.request.url
        if url.startswith((app_url.rstrip("/"), "data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.route("**/*", offline)
            page.goto(app_url, wait_until="networkidle")
            page.get_by_label("iterations (--iterations)").fill("15")
            page.get_by_label("size (--size)").fill("64")
            page.locator("#invert-run").click()
            page.locator("#invert-metrics").get_by_text("PSNR (dB)").wait_for(timeout=90_000)
            page.wait_for_function(
                "() => { const imgs = [...document.querySelectorAll('#invert-gallery img')];"
                " return imgs.length == 2 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
                timeout=30_000,
            )
            assert page.locator("#invert-status").inner_text().startswith("done: pixel at blocks.2")
            assert page.locator("#invert-metrics").get_by_text("feature residual").is_visible()
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            # an error is a message in the page, not a traceback
            page.get_by_role("tab", name="Runs").click()
            page.locator("#runs-folder textarea, #runs-folder input").first.fill(str(tmp_path / "nothing"))
            page.locator("#runs-open").click()
            page.locator("#runs-status").get_by_text("diffinv app: error:").wait_for(timeout=30_000)
            message = page.locator("#runs-status").inner_text()
            assert "--out" in message and "no run folder of that name" in message and "Traceback" not in message
        finally:
            browser.close()
    assert outside == []
