"""ViLD's text classifier: category names -> prompts -> one normalised text embedding each.

As the ViLD demo builds it (tensorflow/tpu: models/official/detection/projects/vild/
ViLD_demo.ipynb, ``build_text_embedding`` with ``prompt_engineering`` and ``this_is`` on):

1. the name is cleaned: ``_`` -> space (LVIS), ``/`` -> " or " (Objects365), lower case, a
   trailing dot stripped (``processed_name(name, rm_dot=True)``);
2. it fills each of the 63 templates below, ``{article}`` being "an" when the *raw* name starts
   with a lower-case vowel, else "a" (``article``);
3. a prompt starting with "a" or "the" gets the prefix "This is " ("a photo of a cat." -> "This
   is a photo of a cat.");
4. every prompt is embedded by the teacher's text encoder and L2-normalised; the prompts' mean
   is renormalised. Synonyms (LVIS) are averaged the same way: all prompts of all synonyms of a
   category enter one mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# The demo's ``multiple_templates``, in its order and groups (a photo of..., adjectives, sizes,
# cleanliness, lighting, image defects, renditions).
TEMPLATES: tuple[str, ...] = (
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of {article} {}.",  # itap: "I took a picture"
    "itap of my {}.",
    "itap of the {}.",
    "a photo of {article} {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {article} {}.",
    "a good photo of the {}.",
    "a bad photo of {article} {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of {article} {}.",
    "a bright photo of the {}.",
    "a dark photo of {article} {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.",
    "a cropped photo of the {}.",
    "a close-up photo of {article} {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of {article} {}.",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
)

TextEncoder = Callable[[list[str]], Tensor]  # N prompts -> (N, D) embeddings


def clean_name(name: str) -> str:
    """ "traffic_light" -> "traffic light", "Bow/Ribbon." -> "bow or ribbon"."""
    return name.replace("_", " ").replace("/", " or ").lower().rstrip(".")


def article(name: str) -> str:
    """The demo's article, from the raw name's first character (lower-case vowels only)."""
    return "an" if name[:1] in ("a", "e", "i", "o", "u") else "a"


def prompts(name: str, templates: Sequence[str] = TEMPLATES) -> list[str]:
    """The prompts of one name: each template filled, "This is " before those starting with
    "a" or "the" (the demo's ``this_is``; its test is a plain prefix check, so "an" counts)."""
    filled = [template.format(clean_name(name), article=article(name)) for template in templates]
    return [f"This is {text}" if text.startswith(("a", "the")) else text for text in filled]


def category_embedding(
    encode: TextEncoder, synonyms: Sequence[str], templates: Sequence[str] = TEMPLATES
) -> Tensor:
    """(D,) unit embedding of a category named by ``synonyms``: the renormalised mean of the
    unit embeddings of every prompt of every synonym."""
    if not synonyms:
        raise ValueError("a category needs at least one name")
    texts = [text for name in synonyms for text in prompts(name, templates)]
    embeddings = F.normalize(encode(texts).float(), dim=-1)  # (S*T, D)
    return F.normalize(embeddings.mean(dim=0), dim=-1)


def text_classifier(
    encode: TextEncoder, vocabulary: Sequence[Sequence[str]], templates: Sequence[str] = TEMPLATES
) -> Tensor:
    """(K, D) unit embeddings of K categories, each a list of synonyms (the first its name)."""
    with torch.no_grad():
        return torch.stack([category_embedding(encode, synonyms, templates) for synonyms in vocabulary])
