"""``diffinv app`` against a hostile visitor (issue 34): uploads are only files this server received through its
upload route (never a server path), uploads honour ``DIFFINV_MAX_IMAGE_PIXELS`` and are told when they are no
image, targets come only from the server's allow-list and are built inside the run slot after a memory check,
and every message names the field with the visitor's value cut short. Through raw HTTP against one running app,
as a visitor would."""

import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffinv.app.limits import Limits

pytestmark = pytest.mark.usefixtures("one_thread")
TARGETS = ("tf_efficientnet_lite0", "vit_tiny_patch16_224")


@pytest.fixture(scope="module")
def hostile_roots(tmp_path_factory):
    """``(models, runs, outside)``: the server's two roots and a folder beside them with a secret image."""
    from diffinv.targets import TargetNetwork

    base = tmp_path_factory.mktemp("hostile-app")
    models, runs, outside = base / "models", base / "runs", base / "outside"
    for folder in (models, runs, outside):
        folder.mkdir()
    secret = np.zeros((48, 48, 3), np.uint8)
    secret[:, :24] = (250, 10, 10)  # a server image no visitor may see
    Image.fromarray(secret).save(outside / "secret.png")
    state = TargetNetwork.from_name("tf_efficientnet_lite0", ["blocks.1"], weights="random:1").model.state_dict()
    torch.save({"fc.weight": torch.zeros(2, 2), "conv.weight": torch.zeros(1)}, models / "other-net.pt")
    state["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, models / "one-wrong-shape.pt")
    return models, runs, outside


@pytest.fixture(scope="module")
def app(hostile_roots):
    """``(url, bench, demo)`` of one running app (127.0.0.1) whose allow-list holds EfficientNet-Lite0 and a tiny
    ViT (random weights only), sizes up to 64 px, 50 iterations."""
    pytest.importorskip("gradio")
    from diffinv.app.ui import build_app
    from diffinv.cli.app import workbench

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = Limits(
        max_size=64, max_iterations=50, models_dir=hostile_roots[0], runs_dir=hostile_roots[1], targets=TARGETS
    )
    bench = workbench("cpu", limits)
    demo = build_app(bench)
    demo.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, ssr_mode=False, quiet=True
    )
    yield f"http://127.0.0.1:{port}/", bench, demo
    demo.close()


def call(url: str, api: str, data: list) -> tuple[str, list | None]:
    """``(event, data)`` of the last message of a raw ``/gradio_api/call/API`` request: ``complete`` with the
    outputs, or ``error`` (Gradio's own refusal, with its message or ``None``)."""
    import httpx

    post = httpx.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=30)
    post.raise_for_status()
    event_id = post.json()["event_id"]
    last = (None, None)
    with httpx.stream("GET", f"{url}gradio_api/call/{api}/{event_id}", timeout=120) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                last = (event, json.loads(line.split(":", 1)[1]))
                if event in ("complete", "error"):
                    break
    return last


def upload(url: str, name: str, content: bytes) -> str:
    """The server path of a file uploaded through ``/gradio_api/upload``, as a browser uploads it."""
    import httpx

    answer = httpx.post(f"{url}gradio_api/upload", files={"files": (name, content)}, timeout=30)
    answer.raise_for_status()
    return answer.json()[0]


def png(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def fields(
    upload_value=None,
    *,
    target="tf_efficientnet_lite0",
    weights="random:0",
    layer="blocks.1",
    size=32,
    iterations=2,
    model=None,
    decoder="",
    mapper="",
    method="pixel",
):
    return ["chelsea", upload_value, target, weights, layer, method, model, decoder, mapper, iterations, size, 0]


def file_data(path: str, name: str = "photo.png") -> dict:
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def shown_images(outputs) -> list:
    """The gallery of an Invert answer: ``[(file path, caption)]``."""
    gallery = outputs[1] if outputs else None
    return [(item["image"]["path"], item.get("caption")) for item in gallery or []]


# ---------------------------------------------------------------------- item 1: uploads are only uploads
@pytest.mark.hostile("app-upload-server-path")
def test_an_upload_that_names_a_server_file_is_refused(app, hostile_roots):
    url, *_ = app
    secret = str(hostile_roots[2] / "secret.png")
    refused = (
        "**diffinv app: error: `--images` (upload): not a file uploaded to this page; upload the image "
        "with the page's upload field.**"
    )
    for value in ({"path": secret}, {"path": secret, "orig_name": "x.png"}, {"path": "/etc/passwd"}):
        event, outputs = call(url, "invert", fields(value))
        assert event == "complete" and outputs[0] == refused and shown_images(outputs) == []
        assert secret not in json.dumps(outputs)
    event, outputs = call(url, "invert", [{"path": secret}, *fields()[1:]])  # as the bundled photo's name
    assert outputs[0].startswith("**diffinv app: error: `--images` {'path': ") and secret not in outputs[0]
    # Gradio's own check refuses a file object with its meta outside its upload folder
    event, outputs = call(url, "invert", fields(file_data(secret)))
    assert event == "error" and secret not in json.dumps(outputs)
    for api, extra in (("depth", []), ("channels", [2])):
        event, outputs = call(url, api, fields({"path": secret}) + extra)
        assert event == "complete" and outputs[0] == refused, outputs
    # a real upload works: raw HTTP as the page sends it, and gradio_client's own upload
    from gradio_client import Client, handle_file

    path = upload(url, "photo.png", png(np.full((40, 40, 3), 120, np.uint8)))
    event, outputs = call(url, "invert", fields(file_data(path)))
    assert event == "complete" and outputs[0].startswith("done: pixel at blocks.1"), outputs
    (original, caption), _ = shown_images(outputs)
    assert caption == "original (upload)"
    mine = hostile_roots[2] / "mine.png"
    mine.write_bytes(png(np.full((40, 40, 3), 60, np.uint8)))
    status, *_ = Client(url, verbose=False).predict(*fields(handle_file(str(mine))), api_name="/invert")
    assert status.startswith("done: pixel at blocks.1")
    # a file in Gradio's cache that no visitor uploaded (a run's output image) is no upload either; with its meta,
    # Gradio lets it through (its own cache), the page does not
    for value in ({"path": original}, file_data(original)):
        event, outputs = call(url, "invert", fields(value))
        assert event == "complete" and outputs[0] == refused and shown_images(outputs) == []


# ---------------------------------------------------------------------- item 8: an upload that is no image
@pytest.mark.hostile("app-upload-not-an-image")
def test_an_upload_that_is_no_image_is_told_in_the_status_line(app):
    url, *_ = app
    for name, content in (("notes.txt", b"Dear visitor, this is no image\n"), ("photo.png", bytes(range(256)) * 4)):
        event, outputs = call(url, "invert", fields(file_data(upload(url, name, content), name)))
        assert event == "complete" and shown_images(outputs) == [], outputs
        status = outputs[0]
        # diffinv.io.load_image's own words, with the visitor's file name for the server path
        assert status.startswith(f"**diffinv app: error: `--images` (upload {name!r}): ") and "image" in status[60:]
        assert "/gradio" not in status and "Traceback" not in status and "Dear" not in status


# ---------------------------------------------------------------------- item 3: the pixel limit holds for uploads
@pytest.mark.hostile("app-upload-pixel-limit")
def test_an_upload_above_the_pixel_limit_is_refused(app, monkeypatch):
    url, *_ = app
    monkeypatch.setenv("DIFFINV_MAX_IMAGE_PIXELS", "1000")
    path = upload(url, "big.png", png(np.full((40, 40, 3), 200, np.uint8)))  # 1,600 pixels
    event, outputs = call(url, "invert", fields(file_data(path, "big.png")))
    assert event == "complete" and shown_images(outputs) == []
    status = outputs[0]
    assert status.startswith("**diffinv app: error: `--images` (upload 'big.png'): ") and "1000" in status, status
    assert "DIFFINV_MAX_IMAGE_PIXELS" in status and "/gradio" not in status
    monkeypatch.setenv("DIFFINV_MAX_IMAGE_PIXELS", "2000")
    event, outputs = call(url, "invert", fields(file_data(path, "big.png")))
    assert outputs[0].startswith("done: pixel at blocks.1")


# ---------------------------------------------------------------------- item 2: targets from the allow-list only
@pytest.mark.hostile("app-layers-any-target")
def test_only_the_servers_targets_are_built_or_listed(app):
    url, bench, _ = app
    before = bench.cached_target_bytes
    refused = (
        "**diffinv app: error: `--target` {}: not a target of this server; expected one of "
        "tf_efficientnet_lite0, vit_tiny_patch16_224 (the server's --targets).**"
    )
    for name in ("vit_huge_patch14_224", "vit_large_patch16_224", "resnet50", "x" * 100_000):
        event, (layer, status) = call(url, "layers", [name, "random:0"])
        shown = repr(name) if len(name) < 60 else repr(name)[:57] + "..."
        assert event == "complete" and status == refused.format(shown)
        event, outputs = call(url, "invert", fields(target=name))
        assert outputs[0] == refused.format(shown)
    # an allowed target's layers come from its architecture: nothing is built for them
    event, (layer, status) = call(url, "layers", ["vit_tiny_patch16_224", "random:0"])
    assert status.startswith("target vit_tiny_patch16_224: ") and layer["value"] == "head_drop"
    assert "blocks.11.mlp.fc2" in [c[0] for c in layer["choices"]] and bench.cached_target_bytes == before


@pytest.mark.hostile("app-target-memory")
def test_a_target_is_built_in_the_run_slot_after_a_memory_check_and_the_cache_is_bounded_in_bytes(monkeypatch):
    from diffinv import resources
    from diffinv.app.runner import RUN_BUSY, BusyError, Workbench
    from diffinv.targets import architecture

    lite0 = architecture("tf_efficientnet_lite0").weight_bytes
    bench = Workbench(limits=Limits(targets=TARGETS), wait_seconds=0.2, target_cache_bytes=int(2.5 * lite0))
    for seed in range(4):
        bench.target("tf_efficientnet_lite0", f"random:{seed}", 32)
        assert bench.cached_target_bytes <= 2.5 * lite0
    assert [key[1] for key in bench._targets] == ["random:2", "random:3"]  # the oldest went first
    with bench._run_lock:  # another visitor's run holds the machine: a new target waits for the slot, then is busy
        assert bench.target("tf_efficientnet_lite0", "random:3", 32) is not None  # the cache needs no slot
        with pytest.raises(BusyError, match=re.escape(RUN_BUSY)):
            bench.target("tf_efficientnet_lite0", "random:9", 32)
    # nothing free but what the cache would give up (the oldest target): less than the weights with their margin
    monkeypatch.setattr(resources, "_host_available", lambda: 0)
    with pytest.raises(
        ValueError,
        match=r"^`--target` 'tf_efficientnet_lite0': building it needs an estimated "
        r"26\.\d MiB \(its weights, 17\.9 MiB, with margin\), but only 17\.9 MiB",
    ):
        bench.target("tf_efficientnet_lite0", "random:9", 32)
    assert [key[1] for key in bench._targets] == ["random:2", "random:3"]


CHILD = textwrap.dedent("""
    import json
    from diffinv import resources
    from diffinv.app.limits import Limits
    from diffinv.app.runner import Workbench

    def rss():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024

    out = {}
    bench = Workbench(limits=Limits(targets=("vit_huge_patch14_224", "tf_efficientnet_lite0")))
    start = rss()
    names, default = bench.layer_choices("vit_huge_patch14_224")  # 632M parameters: 2.4 GiB if it were built
    out["layers"], out["default"], out["grown"] = len(names), default, rss() - start
    try:
        Workbench(limits=Limits()).layer_choices("vit_huge_patch14_224")
    except ValueError as err:
        out["refused"] = str(err)
    resources._host_available = lambda: 2 * 2**30  # 2 GiB free: too little for its weights
    try:
        bench.target("vit_huge_patch14_224", "random:0", 224)
    except ValueError as err:
        out["memory"] = str(err)
    out["cached"] = bench.cached_target_bytes
    print(json.dumps(out))
""")


@pytest.mark.hostile("app-target-memory", "app-layers-any-target")
def test_a_huge_target_is_listed_without_memory_and_refused_before_it_is_built():
    """Under an address-space limit 1.5 GiB above this test process's own (which has imported more): building
    vit_huge_patch14_224 (2.4 GiB of weights) would fail at once instead of filling the machine."""
    status = Path("/proc/self/status").read_text()
    limit = int(status.split("VmSize:")[1].split()[0]) * 1024 + 3 * 2**29
    env = {"OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2", "HF_HUB_OFFLINE": "1"}
    import os

    done = subprocess.run(
        ["prlimit", f"--as={limit}", sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["layers"] > 500 and out["default"] and out["grown"] < 300 * 2**20 and out["cached"] == 0
    assert out["refused"].startswith(
        "`--target` 'vit_huge_patch14_224': not a target of this server; expected one of tf_efficientnet_lite0"
    )
    assert out["memory"].startswith("`--target` 'vit_huge_patch14_224': building it needs an estimated 3.5 GiB")


# ---------------------------------------------------------------------- items 5, 6, 7, 9: messages before any work
@pytest.mark.hostile("app-size-below-ssim-window")
def test_sizes_below_ssims_window_are_refused_before_work(app):
    url, *_ = app
    for size in (8, 9, 10):
        event, outputs = call(url, "invert", fields(size=size))
        assert outputs[0] == (
            f"**diffinv app: error: `--size` expected an integer from 11 to 64 (this server's "
            f"--max-size), got {size}**"
        )
    event, outputs = call(url, "invert", fields(size=11))
    assert outputs[0].startswith("done: pixel at blocks.1") and "| SSIM |" in outputs[3]


@pytest.mark.hostile("app-long-names")
def test_every_text_field_with_100k_characters_is_named_and_cut(app):
    url, *_ = app
    long = "a" * 100_000
    cut = repr(long)[:57] + "..."
    cases = {
        "--weights": fields(weights=long),
        "--model": fields(method="diffusion", model=long),
        "--decoder": fields(method="decoder", decoder=long),
        "--mapper": fields(method="mapper", mapper=long),
        "--layer": fields(layer=long),
        "--target": fields(target=long),
        "--method": fields(method=long),
        "--images": [long, *fields()[1:]],
    }
    for flag, values in cases.items():
        event, outputs = call(url, "invert", values)
        assert event == "complete" and outputs[0].startswith(f"**diffinv app: error: `{flag}` {cut}"), (flag, outputs)
        assert len(outputs[0]) < 1000
    event, outputs = call(url, "open_run", [long])
    assert event == "complete" and outputs[0].startswith(f"**diffinv app: error: `--out` {cut}")
    assert len(outputs[0]) < 500


@pytest.mark.hostile("app-fixed-input-size")
def test_a_target_of_fixed_input_size_names_the_size_it_takes(app, tmp_path, capsys):
    from diffinv.cli import main
    from diffinv.targets import TargetNetwork

    url, *_ = app
    event, outputs = call(url, "invert", fields(target="vit_tiny_patch16_224", layer="blocks.1", size=32))
    assert outputs[0] == (
        "**diffinv app: error: `--size` 32: target 'vit_tiny_patch16_224' takes 224 x 224 images "
        "only (its input size is fixed); expected --size 224, above this server's --max-size 64.**"
    )
    expected = (
        "`--size` 32 (input_size (32, 32)): target 'vit_tiny_patch16_224' takes 224 x 224 images only (its "
        "input size is fixed); expected --size 224."
    )
    with pytest.raises(ValueError) as err:
        TargetNetwork.from_name("vit_tiny_patch16_224", "blocks.1", weights=None, input_size=(32, 32))
    assert str(err.value) == expected
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(
        [
            "extract",
            str(tmp_path / "a.png"),
            "--target",
            "vit_tiny_patch16_224",
            "--weights",
            "random:0",
            "--layer",
            "blocks.1",
            "--size",
            "32",
            "--out",
            str(tmp_path / "f.safetensors"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2 and capsys.readouterr().err.strip() == f"diffinv extract: error: {expected}"
    assert not (tmp_path / "f.safetensors").exists()


@pytest.mark.hostile("app-weights-wrong-keys")
def test_weights_of_another_network_or_shape_get_one_line_with_counts(app, hostile_roots, tmp_path, capsys):
    from diffinv.cli import main

    url, *_ = app
    models = hostile_roots[0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    other = (
        "`--weights` {!r} is not a state dict of 'tf_efficientnet_lite0': of its 2 keys, 296 missing (e.g. "
        "'conv_stem.weight', 'bn1.weight', 'bn1.bias', ...); 2 unexpected (e.g. 'fc.weight', 'conv.weight') (the "
        "network has 296); expected a file written by torch.save(model.state_dict()) for this target."
    )
    shape = (
        "`--weights` {!r} is not a state dict of 'tf_efficientnet_lite0': of its 296 keys, 1 of the wrong shape "
        "(e.g. 'conv_stem.weight': (8, 3, 3, 3) in the file, (32, 3, 3, 3) expected) (the network has 296); "
        "expected a file written by torch.save(model.state_dict()) for this target."
    )
    for name, message in (("other-net.pt", other), ("one-wrong-shape.pt", shape)):
        event, outputs = call(url, "invert", fields(weights=name))
        assert outputs[0] == f"**diffinv app: error: {message.format(name)}**", outputs[0]
        code = main(
            [
                "extract",
                str(tmp_path / "a.png"),
                "--weights",
                str(models / name),
                "--layer",
                "blocks.1",
                "--size",
                "32",
                "--out",
                str(tmp_path / "f.safetensors"),
                "--device",
                "cpu",
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and err == f"diffinv extract: error: {message.format(str(models / name))}"


@pytest.mark.hostile("app-port-out-of-range")
def test_a_port_out_of_range_is_refused_at_once(capsys):
    from diffinv.cli import main

    for port in ("70000", "0", "-1", "http", "9" * 500):
        with pytest.raises(SystemExit) as exit_:
            main(["app", "--port", port])
        shown = port if len(port) <= 40 else port[:37] + "..."
        assert exit_.value.code == 2
        assert (
            capsys.readouterr()
            .err.strip()
            .endswith(f"diffinv app: error: argument --port: expected a port from 1 to 65535, got {shown!r}")
        )


@pytest.mark.hostile("app-layers-any-target")
def test_the_targets_flag_names_the_allow_list_and_refuses_unknown_names(capsys):
    from diffinv.cli import build_parser, main
    from diffinv.cli.app import allowed_targets
    from diffinv.targets import installed_targets

    assert build_parser().parse_args(["app"]).targets is None
    assert allowed_targets(None) == tuple(installed_targets()) and "tf_efficientnet_lite0" in installed_targets()
    args = build_parser().parse_args(["app", "--targets", "vit_tiny_patch16_224", "resnet18", "vit_tiny_patch16_224"])
    assert allowed_targets(args.targets) == ("vit_tiny_patch16_224", "resnet18")
    assert main(["app", "--targets", "resnet18", "no_such_net" * 20]) == 2  # refused before the server starts
    assert capsys.readouterr().err.strip() == (
        f"diffinv app: error: `--targets` {('no_such_net' * 20)[:57] + '...'!r}: not a target network; expected "
        "one of resnet50, resnet101, tf_efficientnet_lite0, tf_efficientnet_lite2, <any timm model name>."
    )
