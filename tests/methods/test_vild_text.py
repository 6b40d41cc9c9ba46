"""ViLD's text classifier (vvk.methods.vild.text) against hand-computed prompts and embeddings."""

import math

import open_clip
import pytest
import torch

from vvk.methods.vild.text import TEMPLATES, article, category_embedding, clean_name, prompts, text_classifier


def test_the_demo_has_63_distinct_templates_each_with_one_slot():
    assert len(TEMPLATES) == 63 and len(set(TEMPLATES)) == 63
    assert all(t.replace("{article}", "").count("{}") == 1 for t in TEMPLATES)


@pytest.mark.parametrize(
    "raw, cleaned",
    [("traffic_light", "traffic light"), ("Bow/Ribbon.", "bow or ribbon"), ("cat", "cat"), ("a.b.", "a.b")],
)
def test_names_are_cleaned_as_the_demo_does(raw, cleaned):
    assert clean_name(raw) == cleaned


def test_the_article_comes_from_the_raw_name_lower_case_vowels_only():
    assert [article(n) for n in ("apple", "umbrella", "cat", "Apple", "_egg")] == ["an", "an", "a", "a", "a"]


def test_prompts_fill_each_template_and_prefix_those_starting_with_a_or_the():
    texts = prompts("traffic_light")
    assert len(texts) == 63
    assert texts[0] == "There is a traffic light in the scene."  # capital T: no prefix
    assert texts[2] == "This is a photo of a traffic light in the scene."
    assert texts[5] == "itap of a traffic light."
    assert "This is an embroidered traffic light." in texts and "This is the toy traffic light." in texts
    assert prompts("orange")[0] == "There is an orange in the scene."


def _encoder(vectors: dict[str, list[float]]):
    """A text encoder that maps a prompt to the vector of the first key it contains."""

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.tensor([next(v for k, v in vectors.items() if k in t) for t in texts])

    return encode


def test_each_prompt_is_normalised_before_the_mean_which_is_renormalised():
    # prompts of "ox": "This is an ox" -> (3, 4), "This is the ox" -> (10, 0); normalised (0.6, 0.8)
    # and (1, 0), mean (0.8, 0.4), renormalised (2, 1) / sqrt(5). Averaging the raw vectors
    # would give (6.5, 2) / |.|, a different direction.
    encode = _encoder({"the": [10.0, 0.0], "an ox": [3.0, 4.0]})
    embedding = category_embedding(encode, ["ox"], templates=("{article} {}", "the {}"))
    assert torch.allclose(embedding, torch.tensor([2.0, 1.0]) / math.sqrt(5), atol=1e-6)


def test_synonyms_enter_one_mean_over_all_their_prompts():
    # "ox": 1 prompt -> (1, 0); "bull": 1 prompt -> (0, 5) -> (0, 1); mean (0.5, 0.5) -> (1, 1)/sqrt(2)
    encode = _encoder({"ox": [1.0, 0.0], "bull": [0.0, 5.0]})
    (embedding,) = text_classifier(encode, [["ox", "bull"]], templates=("the {}",))
    assert torch.allclose(embedding, torch.tensor([1.0, 1.0]) / math.sqrt(2), atol=1e-6)


def test_an_empty_synonym_list_is_an_error():
    with pytest.raises(ValueError, match="at least one name"):
        category_embedding(_encoder({"": [1.0]}), [])


def test_open_clip_text_tower_gives_one_unit_embedding_per_category():
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    seen: list[int] = []

    def encode(texts: list[str]) -> torch.Tensor:
        seen.append(len(texts))
        return model.encode_text(tokenizer(texts))

    matrix = text_classifier(encode, [["cat"], ["traffic_light", "stoplight"]])
    assert matrix.shape == (2, 512) and seen == [63, 126]
    assert torch.allclose(matrix.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(matrix[0], matrix[1])
