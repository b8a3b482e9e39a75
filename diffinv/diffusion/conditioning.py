"""The text conditioning of :class:`~diffinv.pipelines.DiffInvPipeline`: the prompts of a call (the target's
class when none is given), their CLIP embeddings, and the UNet's noise prediction with classifier-free guidance."""

from __future__ import annotations

import threading

import torch

from diffinv.compilation import compiled
from diffinv.prompts import class_prompt, resolve_prompts

from .call_features import CallFeatures

__all__ = ["TOKENIZER_LOCK", "ConditioningMixin", "call_prompts", "noise_prediction"]

# A tokenizer backed by the Rust `tokenizers` library refuses concurrent calls ("Already borrowed"):
# calls of a pipeline shared between threads take turns to tokenize (a few microseconds).
TOKENIZER_LOCK = threading.Lock()


class ConditioningMixin:
    """:meth:`encode_prompt` of :class:`~diffinv.pipelines.DiffInvPipeline` (its ``tokenizer``, ``text_encoder``)."""

    def encode_prompt(
        self,
        prompt: list[str],
        device: torch.device,
        do_classifier_free_guidance: bool,
        negative_prompt: list[str] | None = None,
    ) -> torch.Tensor:
        """CLIP embeddings ``(N, L, D)``; with guidance ``(2N, L, D)``, negative/unconditional first."""

        def embed(texts: list[str]) -> torch.Tensor:
            with TOKENIZER_LOCK:
                tokens = self.tokenizer(
                    texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                    return_tensors="pt",
                )  # fmt: skip
            mask = None
            if getattr(self.text_encoder.config, "use_attention_mask", False):
                mask = tokens.attention_mask.to(device)
            return self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

        embeds = embed(prompt)
        if do_classifier_free_guidance:
            embeds = torch.cat([embed(negative_prompt or [""] * len(prompt)), embeds])
        return embeds.to(self.unet.dtype)


def call_prompts(prompt: str | list[str] | None, call: CallFeatures) -> list[str]:
    """The prompt of each image: given (``@file`` references resolved), or the target's class."""
    if prompt is not None and prompt != "auto":
        return resolve_prompts(prompt, len(call.features))
    classes = call.target.classify_features(call.features, call.layer, call.image_size, input_size=call.input_size)
    if classes is None:
        if prompt == "auto":
            raise ValueError(
                f"`prompt='auto'` needs a target with a classifier head and class names whose layer "
                f"{call.layer!r} feeds the classifier alone; {call.target.name!r} cannot classify these features. "
                f"Give a prompt."
            )
        return [""] * len(call.features)
    return [class_prompt(call.target.class_name(int(c))) for c in classes]


def noise_prediction(
    unet,
    latents: torch.Tensor,
    t: torch.Tensor,
    prompt_embeds: torch.Tensor,
    guidance_scale: float,
    compile: bool | str = False,
) -> torch.Tensor:
    """One UNet call (two halves with classifier-free guidance): fp32 in, fp32 out; ``compile``: through
    ``torch.compile`` with that backend (:mod:`diffinv.compilation`)."""
    do_cfg = guidance_scale > 1.0
    model_input = torch.cat([latents] * 2) if do_cfg else latents
    net = compiled(unet, compile=compile) if compile else unet
    noise = net(model_input.to(unet.dtype), t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
    noise = noise.float()
    if do_cfg:
        uncond, cond = noise.chunk(2)
        noise = uncond + guidance_scale * (cond - uncond)
    return noise
