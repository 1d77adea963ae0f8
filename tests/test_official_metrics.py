"""The release's retrieval metrics and record shape on tricky generated texts, against hand-computed values."""

import pytest

from msa.eval import official_metrics as om
from msa.prompt import OFFICIAL

# A two-round official transcript: the model names [4], the engine appends doc 4 (which itself mentions
# "[12]" and "[3 ]" and "[x]"), the model names [3], then ends retrieval and answers twice.
TRICKY = (
    "\nPlease answer the question based on the above historical document information\n\n"
    "Who won in 1998?\nPlease return all documents related to the question\n<|im_end|>\n<|im_start|>"
    "[4]<|object_ref_end|>[4]. The final [12] was held in Paris [3 ] [x].\n<|object_ref_end|>"
    "[3]<|object_ref_end|>[3]. France won.\n<|object_ref_end|><End-of-Retrieve>"
    "<|im_start|>The user's question is: Who won in 1998?\n<|object_ref_end|>"
    "The answer to the question is: Brazil<|im_end|>The answer to the question is:  France <|im_end|> trailing"
)


def test_pred_ids_are_every_bracketed_number():
    assert om.pred_ids(TRICKY) == [3, 4, 12]  # [12] from inside the appended document counts; "[3 ]", "[x]" do not
    assert om.pred_ids("no ids [ 7] [007] [1][1]") == [1, 7]
    assert om.pred_ids("") == []


def test_pred_answer_is_after_the_last_marker_up_to_im_end():
    assert om.pred_answer(TRICKY) == "France"
    assert om.pred_answer("The answer to the question is: Paris") == "Paris"  # no end marker: to the end
    assert om.pred_answer("I think it is Paris<|im_end|>") == ""  # no answer marker: no answer
    assert om.pred_answer("The answer to the question is:<|im_end|>") == ""


def test_set_scores_hand_computed():
    # P = {3, 4, 12}, G = {3, 7}: |P∩G| = 1, |P∪G| = 4
    s = om.set_scores(om.pred_ids(TRICKY), [3, 7])
    assert s["precision"] == pytest.approx(1 / 3)
    assert s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # 0.4
    assert s["iou"] == pytest.approx(1 / 4)
    assert om.set_scores([], [1]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0}
    assert om.set_scores([1, 1, 2], [2, 1]) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0}


def test_release_record_and_report_keys_and_means():
    texts = {3: "France won.", 4: "The final [12] was held in Paris [3 ] [x].", 7: "Other."}
    r1 = om.release_record("Who won in 1998?", "France", [7, 3], TRICKY, texts, ["France won.", "Other."])
    assert list(r1) == ["labels_id", "pred_id", "question", "true_answer", "pred_answer", "generated_text",
                        "predict_context", "gt_context"]  # fmt: skip
    assert r1["labels_id"] == [3, 7] and r1["pred_id"] == [3, 4, 12] and r1["pred_answer"] == "France"
    assert r1["predict_context"] == [texts[3], texts[4]]  # 12 is not in memory
    r2 = om.release_record("q", "a", [5], "[5]. doc\nThe answer to the question is: a<|im_end|>", {5: "doc"}, ["doc"])
    rep = om.release_report([r1, r2], case_name="mine")
    assert list(rep) == ["mine"] and set(rep["mine"]) == {"precision", "record_list"}
    m = rep["mine"]["precision"]["metrics"]
    assert m["precision"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["recall"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["f1"] == pytest.approx((0.4 + 1) / 2)
    assert m["iou"] == pytest.approx((1 / 4 + 1) / 2)
    assert rep["mine"]["record_list"] == [r1, r2]


def test_release_text_starts_at_the_query_template():
    t = om.release_text(OFFICIAL, "Who?", "[1]<|object_ref_end|><|endoftext|>")
    assert t.startswith("\nPlease answer the question based") and t.endswith("<|im_start|>[1]<|object_ref_end|>")
    assert "<|endoftext|>" not in t


def test_ours_read_scores_and_router_recall():
    s = om.read_scores([[4], [3], []], [3, 7])
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["rounds"] == 2 and s["read"] == 2
    assert om.recall_by_round([[4], [3, 7]], [3, 7], rounds=4) == [0.0, 1.0, 1.0, 1.0]
    routing = {2: [(9, 0.1), (7, 0.9), (3, 0.5)], 3: [(3, 0.8), (1, 0.7), (7, 0.2)]}
    r = om.router_recall(routing, [3, 7], ks=(1, 2, 3))
    assert r["recall@1"] == pytest.approx(0.5) and r["last_recall@1"] == 0.5  # layer 2 top-1 = 7, layer 3 = 3
    assert r["recall@2"] == pytest.approx((1.0 + 0.5) / 2) and r["last_recall@2"] == 0.5
    assert r["recall@3"] == 1.0
    assert om.router_recall({}, [1]) == {}


def test_answer_scores_offline():
    assert om.answer_scores("The Paris", "paris") == {"em": 1.0, "token_f1": 1.0}
    assert om.answer_scores("in Paris", ["Lyon", "Paris"])["token_f1"] == pytest.approx(2 / 3)
