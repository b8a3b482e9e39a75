"""`diffinv bench` split across 2 real processes (torchrun, gloo on CPU): the same records as one
process, one records shard per process, the merged tables written once; and a 2-process run cut
short by Ctrl-C finished by 1 process without recomputing what was finished."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from launch import command, env, run_diffinv

from diffinv.jobs.bench import BenchItem, merged_records, work_items
from diffinv.jobs.distributed import local_workers
from diffinv.jobs.items import WorkRunner
from diffinv.jobs.store import RunStore

ARGS = [
    "bench",
    "--size",
    "32",
    "--num-images",
    "2",
    "--layers",
    "blocks.1",
    "blocks.2",
    "--methods",
    "pixel",
    "dip",
    "--seeds",
    "0",
    "1",
    "--batch-size",
    "1",
]
ITEMS = 2 * 2 * 2 * 2  # layers x methods x seeds x chunks of one image
METRICS = ("psnr", "ssim", "feature_residual", "top1_agreement", "lpips")


def diffinv(root: Path, *argv: str, processes: int = 1) -> subprocess.CompletedProcess:
    return run_diffinv(*argv, processes=processes, cwd=root)


def key(record: dict) -> tuple:
    return record["layer"], record["method"], record["seed"], record["image"]


def raw_records(folder: Path) -> list[dict]:
    """Every complete line of every records shard of a run folder."""
    records = []
    for path in sorted(folder.glob("records*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def test_work_items_and_merge_order():
    items = work_items(["l1", "l2"], ["pixel"], [0, 1], 5, batch_size=2)
    assert (
        len(items) == 2 * 2 * 3
        and items[0] == BenchItem("l1", "pixel", 0, range(0, 2))
        and items[2].images == range(4, 5)
    )
    assert work_items(["l1"], ["pixel"], [0], 4, batch_size=8)[0].images == range(0, 4)  # the demo: one batch
    records = [
        {"layer": "l2", "method": "pixel", "seed": 0, "image": "b", "psnr": 1.0},
        {"layer": "l1", "method": "pixel", "seed": 1, "image": "a", "psnr": 2.0},
        {"layer": "l1", "method": "pixel", "seed": 0, "image": "b", "psnr": 3.0},
        {"layer": "l2", "method": "pixel", "seed": 0, "image": "b", "psnr": 9.0},
    ]  # a duplicate: last kept
    merged = merged_records(records, ["l1", "l2"], ["pixel"], [0, 1], ["a", "b"])
    assert [(key(r), r["psnr"]) for r in merged] == [
        (("l1", "pixel", 0, "b"), 3.0),
        (("l1", "pixel", 1, "a"), 2.0),
        (("l2", "pixel", 0, "b"), 9.0),
    ]


class FakeState:
    def __init__(self, index: int, processes: int = 2):
        self.process_index, self.num_processes, self.is_main_process = index, processes, index == 0

    def wait_for_everyone(self):
        pass


def test_work_runner_gives_each_item_to_one_process(tmp_path):
    """Two runners on one store (as two processes): the second takes what the first does not hold,
    from the end; each item once; a resumed runner skips the finished items."""
    key = lambda r: (r["item"],)  # noqa: E731
    work = list(range(7))
    stores = [RunStore(tmp_path, "test", {}), RunStore(tmp_path, "test", {})]
    main, other = (WorkRunner(store, work, lambda w: [(w,)], key, FakeState(i)) for i, store in enumerate(stores))
    taken = {0: [], 1: []}

    def run(index):
        def run_item(item):
            taken[index].append(item)
            if index == 0 and item == 2:  # process 1 starts while process 0 works on item 2
                thread.start()
                deadline = time.monotonic() + 60
                while len(taken[1]) < 4 and time.monotonic() < deadline:
                    time.sleep(0.01)
            stores[index].append({"item": item})

        return run_item

    thread = threading.Thread(target=other.run, args=(run(1),), kwargs={"desc": "other", "show": False})
    main.run(run(0), desc="main", show=False)
    thread.join(timeout=60)
    assert taken == {0: [0, 1, 2], 1: [6, 5, 4, 3]}  # process 1 started from the end; nothing twice, nothing lost
    assert sorted(r["item"] for r in stores[0].records()) == work
    main.claims.close()  # another process still works on the run: the claims stay
    assert (tmp_path / ".claims").is_dir()
    other.close()
    main.close()  # the last one to finish removes them
    assert not (tmp_path / ".claims").exists()
    again = WorkRunner(RunStore(tmp_path, "test", {}), work + [7], lambda w: [(w,)], key)
    assert again.todo == [7]


def test_local_workers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr("diffinv.jobs.distributed.available_cores", lambda: 4)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert (
        local_workers("auto", cpu, 8) == 4
        and local_workers("auto", cpu, 3) == 3
        and local_workers("auto", gpu, 8) == 1
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert local_workers(2, gpu, 8) == 2
    with pytest.raises(ValueError, match="`--workers` 3 on cuda: each process needs a GPU of its own"):
        local_workers(3, gpu, 8)
    monkeypatch.setenv("WORLD_SIZE", "2")  # already launched: no second launch
    assert local_workers("auto", cpu, 8) == 1 and local_workers(3, cpu, 8) == 1


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory):
    """The same small benchmark in one process (``D1``), split across 2 torchrun processes (``D2``),
    and across 2 processes that the command starts itself (``W2``, ``--workers 2``)."""
    root = tmp_path_factory.mktemp("scaleout_bench")
    for out, processes, workers in (("D1", 1, "1"), ("D2", 2, "1"), ("W2", 1, "2")):
        result = diffinv(root, *ARGS, "--iterations", "3", "--out", out, "--workers", workers, processes=processes)
        assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_workers_flag_gives_the_records_of_one_process(bench_runs):
    one = json.loads((bench_runs / "D1" / "results.json").read_text())
    two = json.loads((bench_runs / "W2" / "results.json").read_text())
    assert two["config"]["processes"] == 2 and one["config"]["processes"] == 1
    assert [key(r) for r in two["records"]] == [key(r) for r in one["records"]]
    for a, b in zip(one["records"], two["records"]):
        for metric in METRICS:
            if a[metric] is not None:
                assert b[metric] == pytest.approx(a[metric], abs=1e-6), (key(a), metric)
    assert len(raw_records(bench_runs / "W2")) == ITEMS and not (bench_runs / "W2" / ".claims").exists()
    assert json.loads((bench_runs / "W2" / "manifest.json").read_text()) == json.loads(
        (bench_runs / "D1" / "manifest.json").read_text()
    )


def test_two_processes_give_the_records_of_one(bench_runs):
    one = json.loads((bench_runs / "D1" / "results.json").read_text())["records"]
    two = json.loads((bench_runs / "D2" / "results.json").read_text())["records"]
    assert len(one) == len(two) == ITEMS
    assert [key(r) for r in two] == [key(r) for r in one]  # merged in the settings' order
    for a, b in zip(one, two):
        assert a["file"] == b["file"]
        for metric in METRICS:
            assert (a[metric] is None) == (b[metric] is None)
            if a[metric] is not None:
                assert b[metric] == pytest.approx(a[metric], abs=1e-6), (key(a), metric)
    # each process wrote its own shard, nothing twice, nothing lost
    folder = bench_runs / "D2"
    assert sorted(p.name for p in folder.glob("records*.jsonl")) == ["records.jsonl", "records.rank1.jsonl"]
    assert all((folder / name).read_text().strip() for name in ("records.jsonl", "records.rank1.jsonl"))
    raw = raw_records(folder)
    assert len(raw) == ITEMS and len({key(r) for r in raw}) == ITEMS
    assert not list((bench_runs / "D1").glob("records.rank*.jsonl"))
    for name in ("results.md", "grid.png", "psnr_vs_depth.png"):
        assert (folder / name).is_file()
    assert all((folder / r["file"]).is_file() for r in two)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["settings"]["batch_size"] == 1 and "num_processes" not in json.dumps(manifest)
    assert manifest == json.loads((bench_runs / "D1" / "manifest.json").read_text())  # the process count is no setting


def test_interrupted_two_process_run_is_finished_by_one(tmp_path):
    argv = [*ARGS, "--iterations", "40", "--out", "D"]
    folder = tmp_path / "D"
    proc = subprocess.Popen(
        command(*argv, processes=2),
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not raw_records(folder) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the launcher and both workers
        log = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = raw_records(folder)
    assert 0 < len(first) < ITEMS, log  # cut short after some records
    assert len({key(r) for r in first}) == len(first)
    stamps = {key(r): (folder / r["file"]).stat().st_mtime_ns for r in first}

    result = diffinv(tmp_path, *argv)  # one process finishes it
    assert result.returncode == 0, result.stdout + result.stderr
    final = json.loads((folder / "results.json").read_text())["records"]
    assert len(final) == ITEMS and len({key(r) for r in final}) == ITEMS
    by_key = {key(r): r for r in final}
    for record in first:  # kept as written, image files untouched: nothing finished was recomputed
        assert by_key[key(record)] == record
        assert (folder / record["file"]).stat().st_mtime_ns == stamps[key(record)]
    raw = raw_records(folder)
    assert len(raw) == ITEMS and len({key(r) for r in raw}) == ITEMS
    for name in ("results.md", "grid.png", "psnr_vs_depth.png"):
        assert (folder / name).is_file()


def test_two_independent_commands_on_one_folder_share_the_work(bench_runs, tmp_path):
    """Two `diffinv bench` commands (no launcher) started together on the same --out: each item runs in
    one of them only (no record twice), both return the whole run, and the numbers are those of one process."""
    argv = [*ARGS, "--iterations", "3", "--out", "D"]
    procs = [
        subprocess.Popen(
            command(*argv), cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], logs
    folder = tmp_path / "D"
    raw = raw_records(folder)
    assert len(raw) == ITEMS and len({key(r) for r in raw}) == ITEMS, logs  # nothing done twice
    one = json.loads((bench_runs / "D1" / "results.json").read_text())["records"]
    both = json.loads((folder / "results.json").read_text())["records"]
    assert [key(r) for r in both] == [key(r) for r in one]
    for a, b in zip(one, both):
        for metric in METRICS:
            if a[metric] is not None:
                assert b[metric] == pytest.approx(a[metric], abs=1e-6), (key(a), metric)
    assert not (folder / ".claims").exists()  # the last to finish removed the claims


HOLD = """
import sys, time
from diffinv.jobs.items import ItemClaims
claims = ItemClaims(sys.argv[1])
assert claims.acquire(3) is not None
print("held", flush=True)
time.sleep(600)
"""


def test_a_claim_is_held_while_its_process_lives(tmp_path):
    """Another process's claim is respected while it runs, and is free once it is killed (no stale claim)."""
    from diffinv.jobs.items import ItemClaims

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        claims = ItemClaims(tmp_path)
        assert claims.acquire(3) is None  # held by the live process
        fd = claims.acquire(4)
        assert fd is not None
        claims.release(fd)
        assert not claims.close()  # the other process still works on the run: the claims stay
    finally:
        proc.kill()
        proc.wait()
    claims = ItemClaims(tmp_path)
    fd = claims.acquire(3)  # its owner is gone: the claim is free
    assert fd is not None
    claims.release(fd)
    assert claims.close() and not (tmp_path / ".claims").exists()
