"""The authors' mdata/qdata files: safe unpickling, readers, gold ids, synthetic writers, chunking."""

import json
import os
import pickle

import pytest

from msa.data.official import (
    OfficialFormatError,
    UnsafePickleError,
    bios_files,
    chunk_text,
    count_units,
    doc_to_idx,
    gold_ids,
    is_memory_file,
    read_memory,
    read_memory_documents,
    read_queries,
    ruler_files,
    safe_load_pickle,
)


class _Payload:
    """Unpickling this runs ``os.system`` (creating a file): the attack a memory file could carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps(["a document", _Payload(marker)], protocol=2)
    path = tmp_path / "mdata_evil.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError) as e:
        read_memory(path)
    assert "system" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    pickle.loads(data)  # the payload is live: the plain unpickler runs it
    assert marker.exists()


def test_objects_other_than_plain_data_are_refused(tmp_path):
    import collections

    for obj in ([collections.OrderedDict(a=1)], [complex(1, 2)]):
        p = tmp_path / "x.pkl"
        p.write_bytes(pickle.dumps(obj))
        with pytest.raises(UnsafePickleError):
            safe_load_pickle(p)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(OfficialFormatError, match="not a readable pickle"):
        safe_load_pickle(tmp_path / "junk.pkl")
    with pytest.raises(OfficialFormatError, match="no such file"):
        safe_load_pickle(tmp_path / "missing.pkl")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_data_loads_at_every_protocol(tmp_path, protocol):
    obj = [("doc", b"bytes \xc3\xa9"), {"k": [1, 2.5, None, True]}, {1, 2}, frozenset({"x"})]
    p = tmp_path / "ok.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=protocol))
    assert safe_load_pickle(p) == obj


def test_memory_file_forms(tmp_path):
    docs = ["first", b"second \xc3\xa9", "third"]
    (tmp_path / "mdata_t.pkl").write_bytes(pickle.dumps(tuple(docs)))
    assert read_memory(tmp_path / "mdata_t.pkl") == ["first", "second é", "third"]
    (tmp_path / "mdata_t.json").write_text(json.dumps(["first", " ", "third"]))
    assert read_memory_documents(tmp_path / "mdata_t.json") == (["first", "third"], [0, 2])  # id = file index
    (tmp_path / "mdata_bad.pkl").write_bytes(pickle.dumps({"a": "b"}))
    with pytest.raises(OfficialFormatError, match="list of document strings"):
        read_memory(tmp_path / "mdata_bad.pkl")
    (tmp_path / "mdata_bad2.pkl").write_bytes(pickle.dumps(["a", 3]))
    with pytest.raises(OfficialFormatError, match="document 1: expected a string"):
        read_memory(tmp_path / "mdata_bad2.pkl")
    assert is_memory_file("x/mdata_a.pkl") and is_memory_file("mdata_a.json") and not is_memory_file("docs.json")


def test_query_files_pickle_and_json_and_gold_by_exact_text(tmp_path):
    memory = ["alpha doc", "beta doc", "alpha doc", "gamma doc"]  # "alpha doc" twice: ids 0 and 2
    rows = [{"query": "q1?", "reference_list": ["alpha doc", "gamma doc"], "answer": "A"},
            {"query": "q2?", "reference_list": ["beta doc", "not in memory"], "answer": ["B", "b"]}]  # fmt: skip
    (tmp_path / "qdata_t.pkl").write_bytes(pickle.dumps(rows))
    (tmp_path / "qdata_t.json").write_text(json.dumps([{"question": r["query"], "labels": r["reference_list"],
                                                        "answer": r["answer"]} for r in rows]))  # fmt: skip
    (tmp_path / "qdata_t.jsonl").write_text("\n".join(json.dumps({"question": r["query"], "labels": r["reference_list"],
                                                                  "answer": r["answer"]}) for r in rows))  # fmt: skip
    index = doc_to_idx(memory)
    assert index["alpha doc"] == 2  # last index wins
    assert doc_to_idx({5: "x", 9: "x", 7: "y"}) == {"x": 9, "y": 7}
    for name in ("qdata_t.pkl", "qdata_t.json", "qdata_t.jsonl"):
        qs = gold_ids(read_queries(tmp_path / name), index)
        assert [q.question for q in qs] == ["q1?", "q2?"]
        assert [q.gold for q in qs] == [[2, 3], [1]]
        assert [q.missing for q in qs] == [0, 1]
        assert qs[1].answer == ["B", "b"]
    (tmp_path / "qdata_bad.pkl").write_bytes(pickle.dumps([{"query": "q", "answer": "a"}]))
    with pytest.raises(OfficialFormatError, match="query 0: needs"):
        read_queries(tmp_path / "qdata_bad.pkl")
    (tmp_path / "qdata_bad.json").write_text("[{")
    with pytest.raises(OfficialFormatError, match="malformed JSON"):
        read_queries(tmp_path / "qdata_bad.json")


def test_bios_files_are_in_the_official_shape(tmp_path):
    m, q = bios_files(tmp_path, "b", num_people=32, num_single=3, num_multi=2, seed=5)
    assert (m.name, q.name) == ("mdata_b.pkl", "qdata_b.pkl")
    raw = pickle.loads(q.read_bytes())
    assert set(raw[0]) == {"query", "reference_list", "answer"}
    docs = read_memory(m)
    qs = gold_ids(read_queries(q), doc_to_idx(docs))
    assert len(docs) == 32 and len(qs) == 5
    assert all(len(x.gold) == 1 for x in qs[:3]) and all(len(x.gold) == 2 for x in qs[3:])
    assert all(x.answer in docs[x.gold[-1]] or x.answer in " ".join(docs[g] for g in x.gold) for x in qs)
    mj, qj = bios_files(tmp_path, "b", num_people=32, num_single=3, num_multi=2, seed=5, suffix=".json")
    assert set(json.loads(qj.read_text())[0]) == {"question", "labels", "answer"}
    assert read_memory(mj) == docs and [x.question for x in read_queries(qj)] == [x.question for x in qs]


def test_ruler_files_gold_documents_hold_the_needles(tmp_path):
    m, q = ruler_files(tmp_path, "r", tasks=("niah_single_1", "niah_multivalue"), context_tokens=1024, doc_tokens=96)
    docs = read_memory(m)
    qs = gold_ids(read_queries(q), doc_to_idx(docs))
    assert len(qs) == 2 and all(x.gold and x.missing == 0 for x in qs)
    for x in qs:
        values = x.answer.split(", ")
        assert all(any(v in docs[g] for g in x.gold) for v in values)
    assert len(docs) > len(set(docs))  # the noise haystack repeats: duplicated texts exist


def test_chunk_text_rule():
    text = "One two three. Four five six! Seven eight?\n\nNew paragraph here. " + "w " * 30 + "end."
    docs = chunk_text(text, doc_tokens=8)
    assert docs[0] == "One two three. Four five six!"  # 4 + 4 units; the next sentence would pass 8
    assert docs[1] == "Seven eight?\n\nNew paragraph here."  # paragraphs joined by a blank line
    assert all(count_units(d) <= 8 for d in docs)
    assert "".join(docs).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    cjk = "今天天气很好。我们去公园散步！" * 3
    parts = chunk_text(cjk, doc_tokens=10)
    assert all(count_units(p) <= 10 for p in parts) and "".join(parts) == cjk
    with pytest.raises(ValueError):
        chunk_text("x", 0)
