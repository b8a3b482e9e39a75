"""The learned defenses of the privacy audit (diffinv.defenses, diffinv.jobs.audit):
each lowers its own objective, utility on true labels, the attackers of a fine-tuned client, resume."""

import json

import pytest
import torch

from diffinv.defenses import (
    DefenseTrainConfig,
    TrainedState,
    distance_correlation,
    parse_defense,
    parse_defenses,
    utility_scores,
)
from diffinv.inverters import PixelInverter
from diffinv.io import save_image
from diffinv.jobs.audit import AttackItem, AuditJob, defense_folder, run_audit
from diffinv.jobs.training import TrainConfig

LAYER = "blocks.1"


@pytest.fixture(scope="module")
def train_set():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 32, 32, generator=generator), torch.randint(0, 1000, (8,), generator=generator).tolist()


def _window(history, key, first):
    values = [h[key] for h in history]
    part = values[:4] if first else values[-4:]
    return sum(part) / len(part)


@pytest.mark.parametrize("spec", ["nopeek:20", "shredder:0.5", "adversarial:5"])
def test_each_learned_defense_lowers_its_own_objective(spec, lite0_blocks1_32px, train_set, one_thread):
    images, labels = train_set
    config = DefenseTrainConfig(steps=25, batch_size=8, learning_rate=3e-3, patience=0)
    state = parse_defense(spec).train(lite0_blocks1_32px, LAYER, images, labels, config, progress=False)
    history = state.meta["history"]
    assert len(history) == 25 and state.meta["spec"] == spec
    assert _window(history, "objective", first=False) < _window(history, "objective", first=True)
    if spec.startswith("nopeek"):  # the distance correlation between images and features goes down
        assert state.meta["privacy_after"] < state.meta["privacy_before"]
        assert all(k.startswith("client/") for k in state.tensors)
    elif spec.startswith("shredder"):  # the noise grows
        assert state.meta["privacy_after"] > 1.5 * state.meta["privacy_before"]
        assert set(state.tensors) == {"noise/mean", "noise/log_scale"}
    else:  # a fresh adversary reconstructs worse from the fine-tuned client than from the original one
        assert state.meta["privacy_after"] > state.meta["privacy_before"]
    # the target itself is not changed; the deployment is made from the saved state
    assert not any(p.requires_grad for p in lite0_blocks1_32px.parameters())


def test_distance_correlation_is_one_for_a_linear_map_and_low_for_independent_samples():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=generator)
    assert distance_correlation(x, 3 * x + 1).item() == pytest.approx(1.0, abs=1e-4)
    assert distance_correlation(x, torch.randn(64, 5, generator=generator)).item() < 0.5
    with pytest.raises(ValueError, match="same number"):
        distance_correlation(x, x[:3])


def test_state_round_trip_and_bad_inputs(tmp_path, lite0_blocks1_32px, train_set, one_thread):
    images, labels = train_set
    defense = parse_defense("shredder:0.1")
    state = defense.train(
        lite0_blocks1_32px, LAYER, images, labels, DefenseTrainConfig(steps=2, batch_size=4), progress=False
    )
    loaded = TrainedState.load(state.save(tmp_path / "s"))
    assert loaded.meta == json.loads(json.dumps(state.meta))
    assert all(torch.equal(loaded.tensors[k], state.tensors[k]) for k in state.tensors)
    with pytest.raises(ValueError, match="true labels"):
        defense.train(lite0_blocks1_32px, LAYER, images, None, progress=False)
    with pytest.raises(ValueError, match="stands alone"):
        parse_defense("nopeek:1+noise:0.1")
    with pytest.raises(ValueError, match="strength of 'nopeek' must be a finite number >= 0"):
        parse_defense("nopeek:-1")
    with pytest.raises(ValueError, match="learned: give its trained state"):
        parse_defense("nopeek:1").deployment(lite0_blocks1_32px, LAYER)
    with pytest.raises(FileNotFoundError, match="holds no trained defense"):
        TrainedState.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        DefenseTrainConfig(steps=0)


def test_utility_accuracy_of_none_is_the_undefended_accuracy(lite0_blocks1_32px, foolbox_imagenet_32px):
    images, _, labels = foolbox_imagenet_32px
    labels = torch.tensor(labels)
    deployment = parse_defense("none").deployment(lite0_blocks1_32px, LAYER)
    scores = utility_scores(
        deployment, images, LAYER, lite0_blocks1_32px, lite0_blocks1_32px.feature(images, LAYER), labels
    )
    assert torch.equal(scores["accuracy"], (lite0_blocks1_32px.predict(images) == labels).float())
    assert torch.equal(scores["agreement"], torch.ones(len(images)))


def test_white_box_attacker_differentiates_through_the_fine_tuned_client(
    tmp_path, lite0_blocks1_32px, foolbox_imagenet_32px, train_set, one_thread
):
    images, names, labels = foolbox_imagenet_32px
    given = []

    def factory(target):
        given.append(target)
        return PixelInverter(target, iterations=2)

    job = AuditJob(
        lite0_blocks1_32px,
        images,
        names,
        [LAYER],
        parse_defenses(["none", "nopeek:5"]),
        {"pixel": factory},
        tmp_path / "audit",
        seeds=[0],
        batch_size=2,
        settings=None,
        overwrite=False,
        progress=False,
        state=None,
        labels=labels,
        judge=None,
        train_images=train_set[0],
        train_labels=train_set[1],
        defense_training=DefenseTrainConfig(steps=3, batch_size=4, learning_rate=1e-2),
    )
    for item in job.defense_trainings():
        list(job.records(item))
    naive = job._inverter(AttackItem(LAYER, "nopeek:5", "pixel", "naive", 0, range(2)))
    adaptive = job._inverter(AttackItem(LAYER, "nopeek:5", "pixel", "adaptive", 0, range(2)))
    client = job.deployment(LAYER, "nopeek:5").target
    assert naive.target is lite0_blocks1_32px and adaptive.target is client and given[-1] is client
    assert client.weights_fingerprint() != lite0_blocks1_32px.weights_fingerprint()
    # the gradient of the attacker's feature loss flows through the fine-tuned weights, not the original ones
    x = images[:1].clone().requires_grad_()
    grad_client = torch.autograd.grad(client.feature(x, LAYER).square().sum(), x)[0]
    grad_target = torch.autograd.grad(lite0_blocks1_32px.feature(x, LAYER).square().sum(), x)[0]
    assert not torch.allclose(grad_client, grad_target)


def test_audit_with_learned_defenses_reports_the_frontier_and_resumes_without_training(
    tmp_path, lite0_blocks1_32px, foolbox_imagenet_32px, train_set, photos_224px, one_thread
):
    images, names, labels = foolbox_imagenet_32px
    folder = tmp_path / "train"
    for i, image in enumerate(photos_224px):
        save_image(image, folder / f"{i}.png")
    decoder = TrainConfig(
        out="",
        layer="",
        images=[str(folder)],
        max_steps=1,
        batch_size=2,
        hidden_channels=8,
        min_channels=8,
        val_fraction=0.0,
        device="cpu",
        warmup_steps=1,
    )
    methods = {"pixel": lambda t: PixelInverter(t, iterations=2), "decoder": decoder}
    defenses = parse_defenses(["none", "noise:0.5", "nopeek:5", "shredder:0.5"])
    out = tmp_path / "audit"
    kwargs = dict(
        progress=False,
        labels=labels,
        train_images=train_set[0],
        train_labels=train_set[1],
        defense_training=DefenseTrainConfig(steps=3, batch_size=4),
    )
    report = run_audit(lite0_blocks1_32px, images, names, [LAYER], defenses, methods, out, **kwargs)

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["kind"] == "training" and r["method"] == "defense"]
    assert sorted(r["defense"] for r in trained) == ["nopeek:5", "shredder:0.5"]
    for spec in ("nopeek:5", "shredder:0.5"):
        assert TrainedState.exists(defense_folder(out, spec, LAYER))
        manifest = json.loads((out / "decoders" / spec.replace(":", "-") / LAYER / "manifest.json").read_text())
        assert manifest["settings"]["defense"] == spec and len(manifest["settings"]["defense_state"]) == 16
    # utility on true labels, agreement beside it; every cell has the judge-free semantic scores with intervals
    rows = {r["defense"]: r for r in report["settings"]}
    none = rows["none"]
    expected = (lite0_blocks1_32px.predict(images) == torch.tensor(labels)).float().mean().item()
    assert none["utility"] == pytest.approx(expected) and none["accuracy"] == none["utility"]
    assert none["agreement"] == 1.0
    for spec in ("nopeek:5", "shredder:0.5"):
        for method in ("pixel", "decoder"):
            for attacker in ("naive", "adaptive"):
                cell = rows[spec]["attacks"][method][attacker]
                assert cell["n"] == 2 and cell["psnr_ci"] and cell["ssim_ci"] and cell["top1_agreement_ci"]
    frontier = report["frontier"]["layers"][LAYER]
    assert frontier["pareto"] and [v["max_loss"] for v in frontier["verdict"]] == [0.01, 0.05, 0.1]
    assert {(v["learned"], v["baseline"]) for v in frontier["versus_baseline"]} == {
        ("nopeek:5", "noise:0.5"),
        ("shredder:0.5", "noise:0.5"),
    }
    text = (out / "report.md").read_text()
    assert "privacy-utility frontier" in text and "| 5 points |" in text and "beats noise" in text
    assert report["cost_seconds"]["defense_training_seconds"] > 0
    assert (out / "privacy_utility.png").is_file()

    # resumed: nothing runs again, no defense is trained again
    states = {spec: defense_folder(out, spec, LAYER) / "state.safetensors" for spec in ("nopeek:5", "shredder:0.5")}
    stamps = {spec: path.stat().st_mtime_ns for spec, path in states.items()}
    again = run_audit(lite0_blocks1_32px, images, names, [LAYER], defenses, methods, out, **kwargs)
    assert len((out / "records.jsonl").read_text().splitlines()) == len(records)
    assert {spec: path.stat().st_mtime_ns for spec, path in states.items()} == stamps
    assert again["frontier"] == json.loads(json.dumps(report["frontier"]))
    # without training images a learned setting is refused before any work
    with pytest.raises(ValueError, match="train on labelled images"):
        run_audit(
            lite0_blocks1_32px,
            images,
            names,
            [LAYER],
            defenses,
            methods,
            tmp_path / "other",
            progress=False,
            labels=labels,
        )


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--defenses", "none", "nopeek:1"], "a learned defense trains on labelled images: give --images, --labels"),
        (["--defenses", "nopeek:1+noise:0.1"], "stands alone in a setting"),
        (["--defense-lr", "-1"], "`--defense-\\*`: `learning_rate` must be a finite number > 0"),
    ],
)
def test_bad_learned_defense_arguments_fail_before_any_work(tmp_path, capsys, argv, match):
    import re

    from diffinv.cli import main

    out = tmp_path / "audit"
    code = main(
        [
            "audit",
            "--weights",
            "random:0",
            "--layers",
            LAYER,
            "--num-images",
            "1",
            "--size",
            "32",
            "--out",
            str(out),
            *argv,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and re.search(match, err), err
    assert not out.exists()
