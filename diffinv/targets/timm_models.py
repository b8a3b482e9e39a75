"""The target-loader unit of any timm model (asked last; pretrained weights from the local caches only)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import WeightsNotFoundError
from .loader import IMAGENET_MEAN, IMAGENET_STD, TargetLoader
from .weights import load_state_dict_into

__all__ = ["TimmModels"]


class TimmModels(TargetLoader):
    """Any timm model name (asked last); pretrained weights from the Hugging Face cache or the torch hub cache."""

    kind = "timm"
    installed_order = 90

    def accepts(self, name: str) -> bool:
        import timm

        return timm.is_model(name)

    def listed(self) -> list[str]:
        return ["<any timm model name>"]

    def normalization(self, name, model):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)

    def installed(self) -> list[str]:
        try:
            from huggingface_hub import constants

            cache = Path(constants.HF_HUB_CACHE)
            repos = (
                sorted(p.name[len("models--timm--") :] for p in cache.glob("models--timm--*"))
                if cache.is_dir()
                else []
            )
        except (ImportError, OSError):
            return []
        names: list[str] = []
        if repos:
            import timm

            for repo in repos:  # "ARCH.TAG": the model of that tag, and ARCH itself when TAG is its default
                for name in (repo.split(".")[0], repo):
                    if name not in names and timm.is_model(name) and self.cached_weights(name):
                        names.append(name)
        return names

    @staticmethod
    def cached_weights(name: str) -> str | None:
        """The local file of a timm model's pretrained weights, or None (no network access)."""
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            return None
        hub_id = getattr(cfg, "hf_hub_id", None)
        if hub_id:
            for filename in (getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"):
                found = filename and try_to_load_from_cache(hub_id.split("@")[0], filename)
                if isinstance(found, str):
                    return found
        url = getattr(cfg, "url", None)
        if url:
            local = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
            if local.is_file():
                return str(local)
        return None

    def load(self, name, weights):
        import timm

        if weights is None:
            return timm.create_model(name, pretrained=False)
        if weights != "default":
            model = timm.create_model(name, pretrained=False)
            load_state_dict_into(model, weights, name)
            return model
        if self.cached_weights(name) is None:
            cfg = timm.models.get_pretrained_cfg(name)
            where = (
                f"the Hugging Face cache ({getattr(cfg, 'hf_hub_id', None) or name})"
                if cfg
                else "the Hugging Face cache"
            )
            raise WeightsNotFoundError(
                f"Pretrained weights for timm model {name!r} are not on this machine (looked in {where} and "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}); diffinv does not download them. Offline, run "
                f"`timm.create_model({name!r}, pretrained=True)` once on a machine with internet and copy its "
                f"HF_HOME cache here, pass `--weights PATH` (`weights=PATH`) to a state-dict file, or use "
                f"`random:0` for random weights."
            )
        import huggingface_hub.constants as hub

        offline, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True  # the files are cached: never touch the network
        try:
            return timm.create_model(name, pretrained=True)
        except Exception as err:  # a broken cache entry
            raise WeightsNotFoundError(
                f"Could not load the cached pretrained weights of timm model {name!r} ({type(err).__name__}: {err}). "
                f"Pass `weights=PATH` to a state-dict file, or `random:0` for random weights."
            ) from err
        finally:
            hub.HF_HUB_OFFLINE = offline
