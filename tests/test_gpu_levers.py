"""The overhead levers of the diffusion loop, each run on CPU with the tiny pipeline (issue 32, items 2-5).

``torch.compile`` modes (recorded, reaching ``torch.compile``, a clear error, the eager fallback), channels-last,
the attention choice, the fp32 redo of a non-finite fp16 decode, TAESD in the loop, and the GPU benchmark
script end to end. Most compile tests replace ``torch.compile`` by a recorder (the code path runs, nothing is
compiled); one compiles for real and is ``slow``. Speed is measured by ``examples/benchmark_gpu.py``, not here.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderTiny

from diffinv import compilation
from diffinv.diffusion import decoding
from diffinv.inverters.config import OptionError
from diffinv.inverters.diffusion import DiffusionInverter
from diffinv.pipelines import load_pipeline, load_taesd

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
RUN = dict(prompt="", num_inference_steps=1, iterations=2, output_type="pt")


@pytest.fixture(scope="module")
def rendered_feats(tiny_pipeline_lite0_blocks1, lite0_blocks1_anysize):
    with torch.no_grad():
        images = tiny_pipeline_lite0_blocks1.render(
            torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), num_inference_steps=1
        )
    return lite0_blocks1_anysize.feature(images, "blocks.1")


def _latents():
    return torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))


def _forget_compiled(*modules):
    for module in modules:
        module.__dict__.pop("_diffinv_compiled", None)


# ---------------------------------------------------------------------- torch.compile modes
@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_compile_modes_reach_torch_compile_and_the_settings(
    tiny_pipeline_lite0_blocks1, lite0_blocks1_anysize, rendered_feats, mode, monkeypatch
):
    calls, steps = [], []

    def recording_compile(fn, **kwargs):  # the code path runs; nothing is compiled
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    _forget_compiled(tiny_pipeline_lite0_blocks1.unet, tiny_pipeline_lite0_blocks1.vae, lite0_blocks1_anysize)
    eager = tiny_pipeline_lite0_blocks1(rendered_feats, latents=_latents(), **RUN)
    fast = tiny_pipeline_lite0_blocks1(rendered_feats, latents=_latents(), compile=mode, **RUN)
    assert calls == [{"backend": "inductor", "mode": mode}] * 3  # the UNet, the VAE decoder, the target
    assert ("forward", "inductor", mode) in tiny_pipeline_lite0_blocks1.unet.__dict__["_diffinv_compiled"]
    assert ("decode", "inductor", mode) in tiny_pipeline_lite0_blocks1.vae.__dict__["_diffinv_compiled"]
    assert len(steps) == (0 if mode == "default" else 3)  # a CUDA-graph step per iteration and for the render
    assert torch.equal(fast.images, eager.images)
    assert (
        DiffusionInverter(lite0_blocks1_anysize, tiny_pipeline_lite0_blocks1, compile=mode).settings()["compile"]
        == mode
    )
    _forget_compiled(tiny_pipeline_lite0_blocks1.unet, tiny_pipeline_lite0_blocks1.vae, lite0_blocks1_anysize)


def test_an_unknown_compile_mode_is_a_clear_error(tiny_pipeline_lite0_blocks1, lite0_blocks1_anysize, rendered_feats):
    with pytest.raises(
        ValueError,
        match=r"`compile` must be True, False, a torch.compile mode \(default, "
        r"reduce-overhead, max-autotune, .*\) or a torch.compile backend .*got 'turbo'",
    ):
        tiny_pipeline_lite0_blocks1(rendered_feats, compile="turbo", **RUN)
    with pytest.raises(OptionError, match=r"method 'diffusion': `compile` must be .*reduce-overhead.*got 'turbo'"):
        DiffusionInverter(lite0_blocks1_anysize, tiny_pipeline_lite0_blocks1, compile="turbo")
    assert compilation.backend("aot_eager") == "aot_eager" and compilation.mode("aot_eager") is None  # backends stay
    assert compilation.backend(True) == "inductor" and compilation.mode(True) is None


def test_a_compile_failure_falls_back_to_eager_with_one_warning(
    tiny_pipeline_lite0_blocks1, lite0_blocks1_anysize, rendered_feats, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    monkeypatch.setattr(compilation, "_WARNED", set())
    _forget_compiled(tiny_pipeline_lite0_blocks1.unet, tiny_pipeline_lite0_blocks1.vae, lite0_blocks1_anysize)
    eager = tiny_pipeline_lite0_blocks1(rendered_feats, latents=_latents(), **RUN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = tiny_pipeline_lite0_blocks1(rendered_feats, latents=_latents(), compile="max-autotune", **RUN)
        again = tiny_pipeline_lite0_blocks1(rendered_feats, latents=_latents(), compile="max-autotune", **RUN)
    failures = [w for w in caught if issubclass(w.category, RuntimeWarning) and "torch.compile" in str(w.message)]
    assert len(failures) == 1 and "'max-autotune'" in str(failures[0].message)
    assert "inductor exploded" in str(failures[0].message)
    assert torch.equal(fast.images, eager.images) and torch.equal(again.images, eager.images)
    _forget_compiled(tiny_pipeline_lite0_blocks1.unet, tiny_pipeline_lite0_blocks1.vae, lite0_blocks1_anysize)


@pytest.mark.slow
def test_reduce_overhead_compiles_for_real_and_matches_eager(lite0_blocks1_anysize, rendered_feats):
    """Inductor on CPU (no CUDA graphs there): a minute or more of compiling."""
    pipe = load_pipeline("tiny", target=lite0_blocks1_anysize, layer="blocks.1")
    pipe.set_progress_bar_config(disable=True)
    eager = pipe(rendered_feats, latents=_latents(), **RUN)
    fast = pipe(rendered_feats, latents=_latents(), compile="reduce-overhead", **RUN)
    torch.testing.assert_close(fast.loss_history, eager.loss_history, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fast.images, eager.images, rtol=1e-3, atol=2e-3)


# ---------------------------------------------------------------------- channels-last, attention
def test_channels_last_is_applied_recorded_and_gives_the_same_results(
    tiny_pipeline_lite0_blocks1, lite0_blocks1_anysize, rendered_feats
):
    fast = load_pipeline("tiny", target=lite0_blocks1_anysize, layer="blocks.1", channels_last=True, taesd="random")
    fast.set_progress_bar_config(disable=True)
    for module in (fast.unet, fast.vae, fast.loop_vae):
        weight = next(p for p in module.parameters() if p.ndim == 4)
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    fast.set_loop_vae(None)
    torch.testing.assert_close(
        fast(rendered_feats, latents=_latents(), **RUN).images,
        tiny_pipeline_lite0_blocks1(rendered_feats, latents=_latents(), **RUN).images,
        atol=1e-4,
        rtol=1e-4,
    )
    settings = DiffusionInverter(lite0_blocks1_anysize, "tiny", device="cpu", channels_last=True).settings()
    assert settings["channels_last"] is True and settings["attention"] == "sdpa" and settings["taesd"] is None
    with pytest.raises(ValueError, match="`channels_last` must be True or False, got 'yes'"):
        load_pipeline("tiny", channels_last="yes")


def test_attention_is_recorded_and_xformers_missing_is_a_clear_error(lite0_blocks1_anysize):
    import importlib.util

    with pytest.raises(OptionError, match="method 'diffusion': `attention` must be one of 'sdpa', 'xformers'"):
        DiffusionInverter(lite0_blocks1_anysize, "tiny", device="cpu", attention="flash")
    if importlib.util.find_spec("xformers") is None or not torch.cuda.is_available():  # where it is usable, it is used
        with pytest.raises(ValueError, match="`attention` is 'xformers' but xformers attention is not available"):
            DiffusionInverter(lite0_blocks1_anysize, "tiny", device="cpu", attention="xformers")


# ---------------------------------------------------------------------- fp16: a non-finite decode is redone in fp32
def test_a_non_finite_fp16_decode_is_redone_in_fp32_and_counted(lite0_blocks1_anysize, rendered_feats, monkeypatch):
    pipe = load_pipeline("tiny", target=lite0_blocks1_anysize, layer="blocks.1", torch_dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    decode, seen, state = decoding.decode_latents, [], {"iteration": 0}

    def decode_with_inf_on_iteration_1(vae, latents):  # image 1 overflows in fp16 at iteration 1
        images = decode(vae, latents)
        seen.append((state["iteration"], vae.dtype, len(latents)))
        if vae.dtype == torch.float16 and state["iteration"] == 1 and len(latents) == 2:
            images = images.clone()
            images[1] = float("inf")
        return images

    def count(pipe, step, timestep, kwargs):
        state["iteration"] = step + 1
        return {}

    monkeypatch.setattr(decoding, "decode_latents", decode_with_inf_on_iteration_1)
    out = pipe(rendered_feats, latents=_latents(), callback_on_step_end=count, **{**RUN, "iterations": 3})
    assert out.fp32_decodes.tolist() == [0, 1] and out.skipped_steps == 0
    assert torch.isfinite(out.loss_history).all() and torch.isfinite(out.images).all()
    redos = [s for s in seen if s[1] == torch.float32]
    assert redos and all(s == (1, torch.float32, 1) for s in redos)  # image 1 alone, at iteration 1 alone
    assert (1, torch.float16, 1) in seen  # image 0 decoded again in fp16, without image 1
    assert pipe.vae.dtype == torch.float16  # the fp32 copy is apart; the VAE stays fp16


# ---------------------------------------------------------------------- TAESD in the loop
def test_taesd_decodes_in_the_loop_and_the_full_vae_the_result(
    tiny_pipeline_lite0_blocks1, lite0_blocks1_anysize, rendered_feats, monkeypatch, tmp_path
):
    light = load_pipeline("tiny", target=lite0_blocks1_anysize, layer="blocks.1", taesd="random")
    light.set_progress_bar_config(disable=True)
    assert (
        isinstance(light.loop_vae, AutoencoderTiny)
        and light.with_target(lite0_blocks1_anysize, "blocks.1").loop_vae is light.loop_vae
    )
    decode, used = decoding.decode_latents, []
    monkeypatch.setattr(
        decoding,
        "decode_latents",
        lambda vae, latents: used.append(type(vae).__name__) or decode(vae, latents),
    )
    out = light(rendered_feats, latents=_latents(), **RUN)
    assert set(used[:-1]) == {"AutoencoderTiny"} and used[-1] == "AutoencoderKL"  # the loop, then the result
    full = tiny_pipeline_lite0_blocks1(rendered_feats, latents=_latents(), **RUN)
    assert not torch.equal(out.loss_history, full.loss_history)  # the loop saw TAESD's images
    torch.testing.assert_close(
        out.images, tiny_pipeline_lite0_blocks1.render(out.latents, num_inference_steps=1), atol=1e-5, rtol=1e-5
    )

    light.loop_vae.save_pretrained(tmp_path / "taesd")  # a user's TAESD folder
    loaded = load_taesd(tmp_path / "taesd")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), light.loop_vae.state_dict().values()))
    inverter = DiffusionInverter(
        lite0_blocks1_anysize, "tiny", device="cpu", taesd=str(tmp_path / "taesd"), num_inference_steps=1, iterations=2
    )
    settings = inverter.settings()
    assert settings["taesd"] == str(tmp_path / "taesd") and "taesd_fingerprint" in settings
    assert inverter.invert(rendered_feats, (32, 32), progress=False).info["fp32_decodes"] == [0, 0]
    with pytest.raises(FileNotFoundError, match="`taesd` .*nowhere.* has no TAESD weights"):
        load_taesd(tmp_path / "nowhere")
    with pytest.raises(
        ValueError,
        match="`vae` decodes 4-channel latents 8x up, but this pipeline's VAE decodes 4-channel latents 2x up",
    ):
        tiny_pipeline_lite0_blocks1.set_loop_vae(AutoencoderTiny())


# ---------------------------------------------------------------------- the GPU benchmark, end to end on CPU
@pytest.mark.slow
def test_gpu_benchmark_runs_end_to_end_on_cpu(tmp_path):
    """``--model tiny --quick`` within its 100 s budget (inductor rarely finishes compiling on CPU in it: those
    cells are reported skipped, with the reason)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "benchmark_gpu.py"),
            "--model",
            "tiny",
            "--quick",
            "--out",
            str(tmp_path / "bench"),
            "--peak-tflops",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "bench.json").read_text())["cells"]
    markdown = (tmp_path / "bench.md").read_text()
    assert {(r["batch"], r["K"], r["dtype"], r["compile"]) for r in rows} == {
        (b, k, d, c) for b in (1, 2) for k in (1, 2) for d in ("bf16",) for c in ("off", "reduce-overhead")
    }
    measured = [r for r in rows if r["status"] == "measured"]
    assert measured and all(
        r["image_iterations_per_s"] > 0 and r["flop_per_image_iteration"] > 0 and r["fraction_of_peak"] > 0
        for r in measured
    )
    assert all(r["reason"] for r in rows if r["status"] == "skipped")
    assert markdown.count("\n| ") >= len(rows) and "image-iterations / s" in markdown and "| bf16 |" in markdown


def test_the_levers_are_command_line_flags_recorded_in_the_summary(
    capsys, lite0_blocks1_anysize, rendered_feats, tmp_path
):
    from diffinv.cli import main
    from diffinv.features import FeatureSet

    path = FeatureSet.extract(lite0_blocks1_anysize, rendered_feats.new_zeros(1, 3, 32, 32) + 0.5, "blocks.1").save(
        tmp_path / "f.safetensors"
    )
    base = ["invert", str(path), "--method", "diffusion", "--model", "tiny", "--iterations", "1", "--steps", "1"]
    for extra, needle in (
        (
            ["--compile", "fast"],
            "argument --compile: invalid mode 'fast'; expected one of default, reduce-overhead, max-autotune",
        ),
        (["--attention", "flash"], "argument --attention: invalid choice: 'flash'"),
        (["--taesd", str(tmp_path / "none")], f"`--taesd` {str(tmp_path / 'none')!r} does not exist"),
        (["--taesd", str(tmp_path)], "is not a TAESD folder (no config.json)"),
    ):
        try:
            code = main([*base, *extra, "--out", str(tmp_path / "bad")])
        except SystemExit as exit:  # argparse's errors
            code = exit.code
        assert code == 2 and needle in capsys.readouterr().err, extra
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "out"
    assert main([*base, "--taesd", "random", "--channels-last", "--attention", "sdpa", "--out", str(out)]) == 0
    settings = json.loads(next(out.glob("*.json")).read_text())["settings"]
    assert (settings["taesd"], settings["channels_last"], settings["attention"], settings["compile"]) == (
        "random",
        True,
        "sdpa",
        False,
    )
