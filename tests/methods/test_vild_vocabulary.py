"""Open-vocabulary splits, vocabularies and their cached text embeddings (vvk.methods.vild.split,
.vocabulary, .open_vocabulary)."""

import pytest
import torch

from vvk.errors import VvkError
from vvk.methods.vild.open_vocabulary import parse_vocabulary
from vvk.methods.vild.split import COCO_NOVEL, novel_categories
from vvk.methods.vild.teacher import StandInTeacher
from vvk.methods.vild.vocabulary import category_synonyms, vocabulary_embeddings, vocabulary_key
from vvk.models.detectors.common import coco_categories

DIGITS = [{"id": 10 + d, "name": str(d)} for d in range(10)]
LVIS_LIKE = [
    {"id": 1, "name": "aerosol_can", "frequency": "c"},
    {"id": 2, "name": "air_conditioner", "frequency": "f"},
    {"id": 3, "name": "airboat", "frequency": "r"},
    {"id": 4, "name": "alcohol", "frequency": "r", "synonyms": ["alcohol", "alcoholic_beverage"]},
]


def test_novel_names_map_to_their_ids_and_rare_reads_the_frequency_field(tmp_path):
    assert novel_categories("7,8, 9", DIGITS) == [17, 18, 19]
    assert novel_categories("", DIGITS) == []
    assert novel_categories("rare", LVIS_LIKE) == [3, 4]
    (tmp_path / "novel.txt").write_text("Air_Conditioner\n\nairboat\n")
    assert novel_categories(str(tmp_path / "novel.txt"), LVIS_LIKE) == [2, 3]  # names cleaned


def test_coco17_is_the_open_vocabulary_split_of_cocos_categories():
    ids = novel_categories("coco17", coco_categories())
    names = {c["id"]: c["name"] for c in coco_categories()}
    assert len(COCO_NOVEL) == 17 and sorted(names[i] for i in ids) == sorted(COCO_NOVEL)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("7,eleven", "the dataset has no category 'eleven'"),
        ("7,7", "a category is named twice"),
        ("rare", "no 'frequency' field"),
        (",", "no category names"),
        (",".join(map(str, range(10))), "every category would be novel"),
    ],
)
def test_a_bad_split_is_a_one_line_error_naming_novel(spec, message):
    with pytest.raises(VvkError, match=message) as info:
        novel_categories(spec, DIGITS)
    assert info.value.params == ("novel",) and "\n" not in str(info.value)


def test_vocabularies_come_inline_from_files_with_synonyms_and_from_annotation_files(tmp_path):
    assert parse_vocabulary("red mug, stapler,cat") == [["red mug"], ["stapler"], ["cat"]]
    (tmp_path / "v.txt").write_text("bow tie, bowtie\n\nmug\n")
    assert parse_vocabulary(str(tmp_path / "v.txt")) == [["bow tie", "bowtie"], ["mug"]]
    import json

    (tmp_path / "lvis.json").write_text(json.dumps({"categories": LVIS_LIKE}))
    assert parse_vocabulary(str(tmp_path / "lvis.json"))[3] == ["alcohol", "alcoholic_beverage"]
    assert len(parse_vocabulary("coco")) == 80


@pytest.mark.parametrize(
    "content, message",
    [("", "no category names"), ("cat\nmug\nCat\n", "'Cat' is named twice"), (None, "does not ship LVIS")],
)
def test_an_empty_or_repetitive_vocabulary_is_a_one_line_error(tmp_path, content, message):
    spec = "lvis"
    if content is not None:
        (tmp_path / "v.txt").write_text(content)
        spec = str(tmp_path / "v.txt")
    with pytest.raises(VvkError, match=message) as info:
        parse_vocabulary(spec)
    assert info.value.params == ("vocab",) and "\n" not in str(info.value)


def test_synonyms_of_a_category_follow_its_name_once():
    assert category_synonyms(LVIS_LIKE)[3] == ["alcohol", "alcoholic_beverage"]
    assert category_synonyms(DIGITS[:1]) == [["0"]]


class _Counting(StandInTeacher):
    calls = 0

    def embed_vocabulary(self, vocabulary):
        type(self).calls += 1
        return super().embed_vocabulary(vocabulary)


def test_text_embeddings_are_cached_by_teacher_and_names():
    torch.manual_seed(0)
    teacher = _Counting(["0", "1", "2"], dim=4, image_size=8, width=2)
    first = vocabulary_embeddings(teacher, [["0"], ["2"]])
    again = vocabulary_embeddings(teacher, [["0"], ["2"]])
    assert _Counting.calls == 1 and torch.equal(first, again)
    assert torch.allclose(first, teacher.embed_vocabulary([["0"], ["2"]]))
    other = _Counting(["0", "1", "2"], dim=4, image_size=8, width=2)
    other.name = "stand-in-other"
    assert vocabulary_key(other, [["0"], ["2"]]) != vocabulary_key(teacher, [["0"], ["2"]])
    assert vocabulary_key(teacher, [["2"], ["0"]]) != vocabulary_key(teacher, [["0"], ["2"]])
