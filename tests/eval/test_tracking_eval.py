"""OTB evaluation (vvk.eval.tracking) and the OTB reader (vvk.data.otb).

Metric tests use boxes whose IoU, centre error and curves are worked out by hand; quirk tests
build small OTB folders in tmp_path (empty image files: nothing opens them); the real Crossing
and Couple sequences are read from the shared data; got10k, when installed, is run on the same
inputs as an independent implementation.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vvk.data.otb import FRAME_RANGES, read_boxes, read_otb, read_sequence_list
from vvk.errors import VvkError
from vvk.eval.tracking import (
    ERROR_THRESHOLDS,
    IOU_THRESHOLDS,
    box_errors,
    evaluate_otb,
    plot_otb,
    precision_curve,
    precision_score,
    sequence_curves,
    success_curve,
    success_score,
)

GT = [0.0, 0.0, 10.0, 10.0]


def _boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.integers(1, 300, size=(n, 2))
    wh = rng.integers(8, 80, size=(n, 2))
    return np.concatenate([xy, wh], axis=1).astype(np.float64)  # (n, 4) x, y, w, h


def _write_boxes(path: Path, boxes, sep: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(sep.join(f"{v:g}" for v in box) + "\n" for box in boxes))
    return path


def _sequence(root: Path, folder: str, boxes, *, images=None, sep=",", digits=4, ext="jpg",
              ground_truth="groundtruth_rect.txt") -> Path:  # fmt: skip
    """An OTB folder: empty numbered images (1..len(boxes) unless given) and its ground truth."""
    img = root / folder / "img"
    img.mkdir(parents=True, exist_ok=True)
    for n in range(1, len(boxes) + 1) if images is None else images:
        (img / f"{n:0{digits}d}.{ext}").touch()
    return _write_boxes(root / folder / ground_truth, boxes, sep)


def _one_line(message: str) -> bool:
    return "\n" not in message and len(message) < 300


# --------------------------------------------------------------------------------------------
# metrics on hand-made boxes


def test_box_errors_on_hand_made_boxes():
    pred = np.array([
        [0, 0, 10, 10],      # the same box
        [5, 0, 10, 10],      # half a box to the right: overlap 50, union 150
        [0, 0, 20, 20],      # 4x the area around it: 100 / 400
        [10, 0, 10, 10],     # touching edges: continuous boxes share no area (OTB's +1 rule would)
        [20, 20, 10, 10],    # far away
        [np.nan, 0, 10, 10],  # no prediction
        [3, 3, 0, 0],        # zero size: overlaps nothing, still has a centre
        [2, 2, 5, 5],        # inside: 25 / 100
    ])  # fmt: skip
    ious, errors = box_errors(pred, np.tile(GT, (len(pred), 1)))
    np.testing.assert_allclose(ious, [1, 1 / 3, 0.25, 0, 0, 0, 0, 0.25], rtol=0, atol=1e-15)
    # centres are x + (w - 1) / 2: (4.5, 4.5) for the ground truth
    expected = [0, 5, math.sqrt(50), 10, math.sqrt(800), math.inf, math.sqrt(8), math.sqrt(0.5)]
    np.testing.assert_allclose(errors, expected, rtol=1e-15)
    with pytest.raises(ValueError, match="two \\(N, 4\\) arrays"):
        box_errors(pred[:, :3], pred[:, :3])


def test_success_curve_counts_iou_strictly_above_each_threshold():
    assert IOU_THRESHOLDS.shape == (21,) and IOU_THRESHOLDS[10] == 0.5
    curve = success_curve([1.0, 0.5, 0.0, 0.26])
    # IoU 1 passes thresholds 0..0.95 (not 1), 0.5 passes 0..0.45, 0 passes none, 0.26 passes 0..0.25
    np.testing.assert_allclose(curve, [0.75] * 6 + [0.5] * 4 + [0.25] * 10 + [0.0])
    assert success_score(curve) == pytest.approx((20 + 10 + 0 + 6) / (4 * 21))


def test_precision_curve_counts_error_at_most_each_threshold():
    assert ERROR_THRESHOLDS.tolist() == list(range(51))
    curve = precision_curve([0.0, 20.0, 20.5, math.inf])
    np.testing.assert_allclose(curve, [0.25] * 20 + [0.5] + [0.75] * 30)
    assert precision_score(curve) == 0.5  # 20 px counts (<=)


def test_sequence_curves_score_frame_one_as_the_ground_truth():
    gt = np.tile(GT, (3, 1))
    pred = np.array([[np.nan] * 4, [5, 0, 10, 10], [np.nan] * 4])
    success, precision = sequence_curves(pred, gt)
    # frame 1 -> IoU 1 (20 thresholds passed), frame 2 -> 1/3 (7: 0..0.30), frame 3 -> failure
    assert success_score(success) == pytest.approx(27 / 63)
    assert precision_score(precision) == pytest.approx(2 / 3)
    assert np.isnan(pred[0]).all()  # the caller's array is left alone


# --------------------------------------------------------------------------------------------
# evaluate_otb: averaging, missing predictions, results files


@pytest.fixture
def two_sequences(tmp_path) -> tuple[Path, Path]:
    """A: 3 frames of GT [0, 0, 10, 10]; B: 2 frames. Results: A is hit, missed by half, lost;
    B is exact (its first line is wrong, but frame 1 is always the ground truth)."""
    root, results = tmp_path / "otb", tmp_path / "results"
    _sequence(root, "A", [GT] * 3)
    _sequence(root, "B", [[10, 10, 20, 20], [12, 10, 20, 20]], sep="\t")
    _write_boxes(results / "A.txt", [[50, 50, 5, 5], [5, 0, 10, 10], [np.nan] * 4])
    _write_boxes(results / "B.txt", [[0, 0, 1, 1], [12, 10, 20, 20]])
    return root, results


def test_evaluate_otb_weighs_each_sequence_equally(two_sequences):
    report = evaluate_otb(*two_sequences)
    # A: success 27/63 = 3/7, precision 2/3; B: 20/21 and 1. Means of the two, not of the 5 frames
    # (per frame, precision would be 4/5).
    assert report["success"] == pytest.approx((3 / 7 + 20 / 21) / 2)
    assert report["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert report["sequences"]["A"] == {"success": pytest.approx(3 / 7), "precision": pytest.approx(2 / 3),
                                        "frames": 3, "missing_frames": 1}  # fmt: skip
    assert report["success_curve"][0] == pytest.approx((2 / 3 + 1) / 2)  # IoU 0 fails even at 0
    assert report["success_curve"][-1] == 0.0
    assert len(report["precision_curve"]) == 51 and report["iou_thresholds"][10] == 0.5
    assert (report["num_sequences"], report["frames"], report["missing_frames"]) == (2, 5, 1)
    assert report["missing_sequences"] == []


def test_missing_and_non_finite_predictions_are_failures(two_sequences):
    root, results = two_sequences
    # blank line, NaNs (any case), inf, a lone "nan": all frames without a prediction
    (results / "A.txt").write_text("1,1,1,1\n\nNaN,NaN,NaN,NaN\n")
    (results / "B.txt").write_text("0 0 1 1\n12,10,inf,20\n")
    report = evaluate_otb(root, results)
    assert report["sequences"]["A"]["success"] == pytest.approx(20 / 63)  # frame 1 only
    assert report["sequences"]["B"]["precision"] == 0.5
    assert report["missing_frames"] == 3
    (results / "A.txt").write_text("1,1,1,1\nnan\n5,0,10,10\n")
    assert evaluate_otb(root, results)["sequences"]["A"]["missing_frames"] == 1


def test_missing_results_file_is_an_error_or_a_failure(two_sequences):
    root, results = two_sequences
    (results / "B.txt").unlink()
    with pytest.raises(VvkError, match=r"no results for 1 of 2 sequences \(B\)") as e:
        evaluate_otb(root, results)
    assert _one_line(str(e.value)) and "missing_results='fail'" in str(e.value)
    report = evaluate_otb(root, results, missing_results="fail")
    assert report["missing_sequences"] == ["B"]
    assert report["sequences"]["B"] == {"success": pytest.approx(20 / 42), "precision": 0.5,
                                        "frames": 2, "missing_frames": 1}  # fmt: skip
    assert evaluate_otb(root, results, sequences=["A"])["num_sequences"] == 1
    with pytest.raises(VvkError, match="missing_results=skip: expected error or fail"):
        evaluate_otb(root, results, missing_results="skip")


def test_results_with_a_wrong_line_count_name_the_file_and_counts(two_sequences):
    root, results = two_sequences
    _write_boxes(results / "A.txt", [GT] * 4)
    with pytest.raises(VvkError) as e:
        evaluate_otb(root, results)
    message = str(e.value)
    assert _one_line(message)
    assert message == f"{results / 'A.txt'}: 4 lines, expected 3 (one per frame of A)"
    (results / "A.txt").write_text("1,2,3,4\n1,2,3,4\n1,2,3,4\n\n\n")  # trailing blank lines: fine
    assert evaluate_otb(root, results)["sequences"]["A"]["frames"] == 3
    # a tracker that lost the target in the last two frames and wrote blank lines for them: the
    # lines are frames without a prediction (failures), not a short file
    (results / "A.txt").write_text("1,2,3,4\n\n\n")
    lost = evaluate_otb(root, results)["sequences"]["A"]
    assert lost["frames"] == 3 and lost["missing_frames"] == 2


@pytest.mark.parametrize(
    "text, line, shown",
    [("1,2,3,4\n1,2,3\n1,2,3,4\n", 2, "'1,2,3'"),
     ("1,2,3,4\n1,2,3,4\n1;2;3;4\n", 3, "'1;2;3;4'"),
     ("1,2,3,4\nx,2,3,4\n1,2,3,4\n", 2, "'x,2,3,4'"),
     ("1,2,3,4,0.9\n1,2,3,4\n1,2,3,4\n", 1, "'1,2,3,4,0.9'")],
)  # fmt: skip
def test_malformed_results_line_names_the_file_and_line(two_sequences, text, line, shown):
    root, results = two_sequences
    (results / "A.txt").write_text(text)
    with pytest.raises(VvkError) as e:
        evaluate_otb(root, results)
    assert str(e.value).startswith(f"{results / 'A.txt'}: line {line}: expected 4 finite numbers x,y,w,h")
    assert str(e.value).endswith(f"got {shown}") and _one_line(str(e.value))


def test_results_file_names_aliases_and_case(tmp_path):
    root, results = tmp_path / "otb", tmp_path / "results"
    _sequence(root, "Jogging", _boxes(4, 1), ground_truth="groundtruth_rect.1.txt")
    _sequence(root, "Jogging", _boxes(4, 2), ground_truth="groundtruth_rect.2.txt")
    _sequence(root, "Couple", _boxes(3, 3))
    _write_boxes(results / "Jogging-1.txt", _boxes(4, 1))  # the OTB lists' and pysot's spelling
    _write_boxes(results / "Jogging_2.txt", _boxes(4, 2))  # pytracking's
    _write_boxes(results / "couple.txt", _boxes(3, 3))
    report = evaluate_otb(root, results)
    assert list(report["sequences"]) == ["Couple", "Jogging.1", "Jogging.2"]
    assert report["success"] == pytest.approx(20 / 21) and report["precision"] == 1.0


# --------------------------------------------------------------------------------------------
# reading OTB folders: separators, two targets, frame ranges, frame names


def test_ground_truth_separators(tmp_path):
    boxes = _boxes(5)
    for name, sep in (("Commas", ","), ("Tabs", "\t"), ("Spaces", " "), ("CommaSpace", ", ")):
        _sequence(tmp_path, name, boxes, sep=sep)
    mixed = _sequence(tmp_path, "Mixed", boxes, sep="\t")  # BlurCar1: one line of spaces among tabs
    lines = mixed.read_text().splitlines()
    lines[2] = lines[2].replace("\t", " ")
    mixed.write_text("\n".join(lines) + "\n")
    sequences = read_otb(tmp_path)
    assert len(sequences) == 5
    for seq in sequences:
        np.testing.assert_array_equal(seq.boxes, boxes, err_msg=seq.name)
        assert seq.boxes.dtype == np.float64 and seq.boxes.shape == (5, 4)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf1,2,3,4\r\n5\t6\t7\t8\r\n")  # BOM and CRLF
    np.testing.assert_array_equal(read_boxes(tmp_path / "bom.txt"), [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_two_targets_are_two_sequences_named_as_got10k(tmp_path):
    _sequence(tmp_path, "Jogging", _boxes(6, 1), ground_truth="groundtruth_rect.1.txt")
    _sequence(tmp_path, "Jogging", _boxes(6, 2), ground_truth="groundtruth_rect.2.txt", sep="\t")
    _sequence(tmp_path, "Human4", _boxes(4, 3), ground_truth="groundtruth_rect.2.txt")
    (tmp_path / "Human4" / "groundtruth_rect.1.txt").write_text("\n")  # empty, as in the download
    _sequence(tmp_path, "Skating2", _boxes(3, 4), ground_truth="groundtruth_rect.1.txt")
    _sequence(tmp_path, "Skating2", _boxes(3, 5), ground_truth="groundtruth_rect.2.txt")
    sequences = {s.name: s for s in read_otb(tmp_path)}
    assert list(sequences) == ["Human4", "Jogging.1", "Jogging.2", "Skating2.1", "Skating2.2"]
    np.testing.assert_array_equal(sequences["Jogging.2"].boxes, _boxes(6, 2))
    assert sequences["Jogging.1"].frames == sequences["Jogging.2"].frames  # the same images
    assert sequences["Jogging.1"].aliases == ("Jogging-1", "Jogging_1")
    assert "Human4-2" in sequences["Human4"].aliases
    # OTB list spellings, a folder for all its targets, any case; duplicates once
    names = [s.name for s in read_otb(tmp_path, ["skating2-2", "Jogging", "human4-2", "Jogging.1"])]
    assert names == ["Skating2.2", "Jogging.1", "Jogging.2", "Human4"]


@pytest.mark.parametrize(
    "name, images, boxes, first",
    [("David", 770, 471, 300), ("Football1", 81, 74, 1), ("Freeman3", 474, 460, 1),
     ("Freeman4", 297, 283, 1), ("Diving", 231, 215, 1), ("Tiger1", 354, 354, 6)],
)  # fmt: skip
def test_official_frame_ranges(tmp_path, name, images, boxes, first):
    gt = _boxes(boxes, seed=images)
    _sequence(tmp_path, name, gt, images=range(1, images + 1))
    (seq,) = read_otb(tmp_path)
    last = FRAME_RANGES[name.lower()][1]
    assert len(seq) == last - first + 1 == len(seq.boxes)
    assert (seq.frames[0].name, seq.frames[-1].name) == (f"{first:04d}.jpg", f"{last:04d}.jpg")
    assert (seq.folder_frames, seq.offset) == (images, first - 1)
    # David's 471 boxes are frames 300-770; Tiger1 has a box for every image, its first 5 dropped
    np.testing.assert_array_equal(seq.boxes, gt[-len(seq) :])


def test_ranged_sequence_results_may_cover_every_image(tmp_path):
    root, results = tmp_path / "otb", tmp_path / "results"
    gt = _boxes(471)
    _sequence(root, "David", gt, images=range(1, 771))
    predicted = gt + [3, 0, 0, 0]
    _write_boxes(results / "David.txt", predicted)
    per_frame = evaluate_otb(root, results)
    _write_boxes(results / "David.txt", np.concatenate([np.full((299, 4), 7.0), predicted]))  # 770 lines
    assert evaluate_otb(root, results) == per_frame
    _write_boxes(results / "David.txt", predicted[:400])
    with pytest.raises(VvkError) as e:
        evaluate_otb(root, results)
    assert str(e.value) == (
        f"{results / 'David.txt'}: 400 lines, expected 471 (one per frame of David) "
        "or 770 (one per image of its folder)"
    )
    (root / "David" / "img" / "0500.jpg").unlink()
    with pytest.raises(VvkError, match="David is evaluated on frames 300-770, 470 of those 471 found"):
        read_otb(root)


def test_frames_are_ordered_by_number_whatever_the_name(tmp_path):
    _sequence(tmp_path, "BlurCar1", _boxes(4), images=range(247, 251))  # starts at 0247
    _sequence(tmp_path, "Board", _boxes(3), digits=5)
    _sequence(tmp_path, "KiteSurf", _boxes(12), ext="png")  # 0010 after 0009, not after 0001
    (tmp_path / "KiteSurf" / "img" / "Thumbs.db").touch()
    by_name = {s.name: s for s in read_otb(tmp_path)}
    assert [p.name for p in by_name["BlurCar1"].frames] == ["0247.jpg", "0248.jpg", "0249.jpg", "0250.jpg"]
    assert by_name["Board"].frames[0].name == "00001.jpg"
    assert [p.name for p in by_name["KiteSurf"].frames][8:10] == ["0009.png", "0010.png"]


def test_ground_truth_and_frames_that_disagree_are_errors(tmp_path):
    gt_path = _sequence(tmp_path, "Walking", _boxes(5), images=range(1, 8))
    with pytest.raises(VvkError) as e:
        read_otb(tmp_path)
    assert str(e.value) == f"{gt_path}: 5 boxes for 7 frames in {tmp_path / 'Walking' / 'img'}"
    gt_path.write_text("1,2,3,4\n" * 3 + "1,2,nan,4\n" + "1,2,3,4\n" * 3)
    with pytest.raises(VvkError, match=re.escape(f"{gt_path}: line 4: expected 4 finite numbers")):
        read_otb(tmp_path)
    gt_path.write_text("1,2,3,4\n" * 3 + "\n" + "1,2,3,4\n" * 3)
    with pytest.raises(VvkError, match=re.escape(f"{gt_path}: line 4: ") + ".*got 'a blank line'"):
        read_otb(tmp_path)


def test_choosing_sequences(tmp_path):
    _sequence(tmp_path, "Couple", _boxes(3))
    _sequence(tmp_path, "Jogging", _boxes(3), ground_truth="groundtruth_rect.1.txt")
    _sequence(tmp_path, "Jogging", _boxes(3), ground_truth="groundtruth_rect.2.txt")
    (tmp_path / "notes").mkdir()  # not a sequence: ignored
    listed = tmp_path / "cvpr13.txt"  # the OTB list format: name, tab, attributes
    listed.write_text("Jogging-2\tOCC, DEF, OPR\nCouple\tSV, DEF, FM, OPR, BC\n\nJogging-1\tOCC, DEF, OPR\n")
    assert read_sequence_list(listed) == ["Jogging-2", "Couple", "Jogging-1"]
    chosen = read_otb(tmp_path, read_sequence_list(listed))
    assert [s.name for s in chosen] == ["Jogging.2", "Couple", "Jogging.1"]
    with pytest.raises(
        VvkError, match=r"sequences: 'Bolt' is not a sequence under root=.* \(found 3: Couple,"
    ):
        read_otb(tmp_path, ["Couple", "Bolt"])
    with pytest.raises(VvkError, match="expected a list of names"):
        read_otb(tmp_path, "Couple")
    with pytest.raises(VvkError, match="sequences=\\[\\]: nothing to read"):
        read_otb(tmp_path, [])
    with pytest.raises(VvkError, match="no OTB sequences"):
        read_otb(tmp_path / "notes")
    with pytest.raises(VvkError, match="no such folder"):
        evaluate_otb(tmp_path / "absent", tmp_path)


# --------------------------------------------------------------------------------------------
# real OTB sequences


def test_real_crossing_and_couple(shared_data, tmp_path):
    root = shared_data / "tracking" / "otb"
    couple, crossing = read_otb(root)
    assert (couple.name, crossing.name) == ("Couple", "Crossing")
    for seq, first, last in ((couple, [51, 47, 25, 62], [130, 25, 39, 90]),
                             (crossing, [205, 151, 17, 50], [56, 93, 14, 36])):  # fmt: skip
        lines = seq.ground_truth.read_text().splitlines()
        assert len(seq) == len(seq.boxes) == len(lines) == len(list((root / seq.name / "img").glob("*.jpg")))
        assert seq.boxes[0].tolist() == first and seq.boxes[-1].tolist() == last
        assert seq.frames[0].name == "0001.jpg" and seq.frames[-1].name == f"{len(lines):04d}.jpg"
    assert (len(couple), len(crossing)) == (140, 120)
    cvpr13 = read_sequence_list(root / "cvpr13.txt")
    assert len(cvpr13) == 51 and cvpr13[:2] == ["Basketball", "Bolt"] and "Jogging-2" in cvpr13
    assert len(read_sequence_list(root / "tb_100.txt")) == 100
    # the ground truth as a tracker's results: precision 1, success 20/21 (IoU 1 is not > 1)
    for seq in (couple, crossing):
        _write_boxes(tmp_path / f"{seq.name}.txt", seq.boxes)
    report = evaluate_otb(root, tmp_path)
    assert report["success"] == pytest.approx(20 / 21) and report["precision"] == 1.0
    assert report["frames"] == 260


# --------------------------------------------------------------------------------------------
# plots


def test_plot_otb_ranks_trackers_with_their_scores(two_sequences, tmp_path):
    import matplotlib

    weak = evaluate_otb(*two_sequences)
    perfect = {**weak, "success": 20 / 21, "precision": 1.0}
    path = tmp_path / "plots" / "otb.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text, to be read back
        assert plot_otb({"weak": weak, "best": perfect}, path) == path
    svg = path.read_text()
    labels = re.findall(r"(weak|best) \[(\d\.\d{3})\]", svg)
    # success panel first, then precision; each legend ranked by its own score, 3 decimals
    assert labels == [("best", "0.952"), ("weak", "0.690"), ("best", "1.000"), ("weak", "0.833")]
    assert "Success plots of OPE" in svg and "Precision plots of OPE" in svg
    png = plot_otb({"weak": weak}, tmp_path / "plots" / "otb.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["otb.png", "otb.svg"]  # no temporary left


def test_plot_otb_errors(two_sequences, tmp_path):
    report, out = evaluate_otb(*two_sequences), tmp_path / "plots"
    with pytest.raises(VvkError, match=r"path=.*otb\.xyz: unknown image format '\.xyz' \(one of .*png"):
        plot_otb({"t": report}, out / "otb.xyz")
    with pytest.raises(VvkError, match=r"reports\['t'\]: not an evaluate_otb report"):
        plot_otb({"t": {"success": 0.5}}, out / "otb.png")
    with pytest.raises(VvkError, match=r"precision_curve has 3 points, expected 51"):
        plot_otb({"t": {**report, "precision_curve": [0, 0, 0]}}, out / "otb.png")
    with pytest.raises(VvkError, match="nothing to plot"):
        plot_otb({}, out / "otb.png")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# got10k, an independent implementation, on the same inputs


def test_metrics_match_got10k_functions():
    pytest.importorskip("got10k")
    from got10k.experiments.otb import ExperimentOTB
    from got10k.utils.metrics import center_error, rect_iou

    rng = np.random.default_rng(0)
    gt = _boxes(500, seed=1)
    pred = gt + rng.normal(0, 12, size=gt.shape)
    pred[::50, 2] = 0  # zero width
    pred[::70, 3] = -5  # negative height: got10k's intersection clamps it to nothing too
    ious, errors = box_errors(pred, gt)
    np.testing.assert_allclose(ious, rect_iou(pred, gt), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(errors, center_error(pred, gt), rtol=1e-12)
    bins = SimpleNamespace(nbins_iou=21, nbins_ce=51)
    got_success, got_precision = ExperimentOTB._calc_curves(bins, ious, errors)
    np.testing.assert_array_equal(success_curve(ious), got_success)
    np.testing.assert_array_equal(precision_curve(errors), got_precision)


def test_evaluate_otb_matches_got10k_experiment_otb(tmp_path, monkeypatch, capsys):
    """got10k's ExperimentOTB.report on a stand-in OTB-2013 folder (all 50 folders, so that it
    does not try to download them; the special sequences at their real sizes) and one tracker's
    noisy results with lost frames and a wrong first line."""
    pytest.importorskip("got10k")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib
    from got10k.datasets import OTB
    from got10k.experiments import ExperimentOTB

    sizes = {"David": (770, 471), "Football1": (81, 74), "Freeman3": (474, 460), "Freeman4": (297, 283),
             "Tiger1": (354, 354)}  # fmt: skip
    root, results = tmp_path / "otb", tmp_path / "results" / "OTB2013" / "tracker"
    results.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = OTB._OTB__otb13_seqs  # got10k's list of the 50 folders
    for k, name in enumerate(names):
        images, count = sizes.get(name, (int(rng.integers(4, 30)),) * 2)
        files = (
            [f"groundtruth_rect.{t}.txt" for t in (1, 2)] if name == "Jogging" else ["groundtruth_rect.txt"]
        )
        for t, file in enumerate(files, 1):
            gt = _boxes(count, seed=k * 10 + t)
            _sequence(
                root, name, gt, images=range(1, images + 1), sep="\t" if k % 2 else ",", ground_truth=file
            )
            pred = gt + rng.normal(0, 6, size=gt.shape)
            pred[0] = [1, 1, 1, 1]
            pred[rng.random(count) < 0.1] = np.nan
            target = f"{name}.{t}" if len(files) > 1 else name
            np.savetxt(results / f"{target}.txt", pred, fmt="%.3f", delimiter=",")  # as got10k writes
    with matplotlib.rc_context():  # ExperimentOTB sets global font sizes
        experiment = ExperimentOTB(str(root), version=2013, result_dir=str(tmp_path / "results"),
                                   report_dir=str(tmp_path / "reports"))  # fmt: skip
        theirs = experiment.report(["tracker"])["tracker"]["seq_wise"]
    capsys.readouterr()

    # got10k evaluates Tiger1 on all 354 frames, the OTB toolkit (and vvk) on frames 6-354
    others = [name for name in theirs if name != "Tiger1"]
    ours = evaluate_otb(root, results, sequences=others)
    assert sorted(ours["sequences"]) == sorted(others) and len(others) == 50  # Jogging.1 and .2
    for name in others:
        assert ours["sequences"][name]["success"] == pytest.approx(theirs[name]["success_score"], abs=1e-12)
        assert ours["sequences"][name]["precision"] == pytest.approx(
            theirs[name]["precision_score"], abs=1e-12
        )
    mean_curve = np.mean([theirs[name]["success_curve"] for name in others], axis=0)
    np.testing.assert_allclose(ours["success_curve"], mean_curve, atol=1e-12)
    assert ours["success"] == pytest.approx(np.mean([theirs[n]["success_score"] for n in others]), abs=1e-12)
    assert ours["precision"] == pytest.approx(
        np.mean([theirs[n]["precision_score"] for n in others]), abs=1e-12
    )

    # Tiger1: got10k's own formulas on frames 6-354, with frame 6 as the start
    gt = read_boxes(root / "Tiger1" / "groundtruth_rect.txt")[5:]
    pred = read_boxes(results / "Tiger1.txt", missing_ok=True)[5:]
    pred[0] = gt[0]
    from got10k.utils.metrics import center_error, rect_iou

    bins = SimpleNamespace(nbins_iou=21, nbins_ce=51)
    success, precision = ExperimentOTB._calc_curves(bins, rect_iou(pred, gt), center_error(pred, gt))
    tiger = evaluate_otb(root, results, sequences=["Tiger1"])["sequences"]["Tiger1"]
    assert tiger["success"] == pytest.approx(np.mean(success), abs=1e-12)
    assert tiger["precision"] == pytest.approx(precision[20], abs=1e-12)
    assert tiger["success"] != pytest.approx(theirs["Tiger1"]["success_score"], abs=1e-6)
