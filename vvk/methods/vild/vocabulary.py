"""Text embeddings of a vocabulary, computed once per teacher, templates and names.

Embedding LVIS's 1,203 categories through 63 prompts each is 76k passes of CLIP's text encoder
(minutes on a CPU): ``vocabulary_embeddings`` keeps the (K, D) result under the user cache,
keyed by the teacher's name, its prompt templates and the names (synonyms included), and reads it
back when any of them is the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from torch import Tensor

from vvk.methods.vild.teacher import Teacher


def vocabulary_key(teacher: Teacher, vocabulary: Sequence[Sequence[str]]) -> str:
    record = {"teacher": teacher.name, "templates": list(getattr(teacher, "templates", ())),
              "vocabulary": [list(names) for names in vocabulary]}  # fmt: skip
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


def vocabulary_embeddings(
    teacher: Teacher, vocabulary: Sequence[Sequence[str]], *, cache: bool = True
) -> Tensor:
    """(K, D) unit text embeddings of K categories (each a list of synonyms), from the cache
    when this teacher embedded these names with these templates before."""
    from safetensors.torch import load_file, save_file

    from vvk.atomic import atomic_path
    from vvk.paths import cache_dir

    path = cache_dir() / "vild" / "text" / f"{vocabulary_key(teacher, vocabulary)}.safetensors"
    if cache and path.is_file():
        return load_file(str(path))["embeddings"]
    embeddings = teacher.embed_vocabulary(vocabulary).float().cpu().contiguous()
    if cache:
        with atomic_path(path) as tmp:
            save_file({"embeddings": embeddings}, str(tmp), metadata={"teacher": teacher.name})
    return embeddings


def category_synonyms(categories: Sequence[dict]) -> list[list[str]]:
    """Each category's names for the text classifier: its name, then LVIS's ``synonyms`` (the
    name among them once)."""
    out = []
    for c in categories:
        names = [str(c["name"])]
        names += [str(s) for s in c.get("synonyms", ()) if str(s) != names[0]]
        out.append(names)
    return out
