"""Running calls in threads at once, as concurrent users of one shared object do."""

import threading
from collections.abc import Callable


def run_in_threads(jobs: dict[str, Callable[[], object]], repeat: int = 1, timeout: float = 300) -> dict[str, list]:
    """Starts one thread per job, released together, each calling its job ``repeat`` times.

    Returns:
        ``{name: [result of each call]}``.

    Raises:
        AssertionError: a call raised (its thread's name and error are given) or a thread did not end in time.
    """
    results: dict[str, list] = {name: [] for name in jobs}
    errors: list[str] = []
    barrier = threading.Barrier(len(jobs))

    def worker(name: str) -> None:
        try:
            barrier.wait()
            for _ in range(repeat):
                results[name].append(jobs[name]())
        except Exception as err:  # reported by the caller's thread
            errors.append(f"{name}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=worker, args=(name,), name=name) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"
    return results
