"""The document files `msa bank add` reads (msa.data.jsonl.read_documents)."""

import io
import json

import pytest

from msa.data.jsonl import DocumentFileError, read_documents


def test_formats_by_extension(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "x-1", "text": "one"}\n\n{"id": 7, "text": "two"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"text": "one"}, "two"]))
    (tmp_path / "c.txt").write_text("First\nparagraph.\r\n\r\nSecond.\n\n\n")
    (tmp_path / "d.md").write_text("# Title\n\nBody.")
    a = read_documents(tmp_path / "a.jsonl")
    assert a.texts == ["one", "two"] and a.ids == ["x-1", 7]  # ids keep their type
    b = read_documents(tmp_path / "b.json")
    assert b.texts == ["one", "two"] and b.ids is None
    assert read_documents(tmp_path / "c.txt").texts == ["First\nparagraph.", "Second."]
    assert read_documents(tmp_path / "d.md").texts == ["# Title", "Body."]


def test_byte_order_mark_is_dropped(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"text": "one"}\n')
    (tmp_path / "a.json").write_bytes(bom + b'["one"]')
    (tmp_path / "a.txt").write_bytes(bom + b"one")
    for name in ("a.jsonl", "a.json", "a.txt"):
        assert read_documents(tmp_path / name).texts == ["one"], name
    assert read_documents("-", stdin=io.BytesIO(bom + b'{"id": 1, "text": "one"}')).ids == [1]


def test_stdin_format_from_first_character():
    assert read_documents("-", stdin=io.BytesIO(b'  {"text": "a"}\n{"text": "b"}')).texts == ["a", "b"]
    assert read_documents("-", stdin=io.BytesIO(b'["a", "b"]')).texts == ["a", "b"]
    assert read_documents("-", stdin=io.BytesIO(b"a\n\nb")).texts == ["a", "b"]


@pytest.mark.parametrize("name, content, message", [
    ("m.jsonl", '{"id": 1, "text": "a"}\n{"text": "b"}\n', "m.jsonl:2: has no id|m.jsonl:1 has one"),
    ("m.json", '["a", {"id": "k", "text": "b"}]', "m.json[0]: has no id|m.json[1] has one"),
    ("f.jsonl", '{"id": true, "text": "a"}\n', "id must be an integer or a string"),
    ("o.json", '{"text": "a"}', "array"),
    ("n.jsonl", '[1, 2]\n', 'a "text" string'),
    ("b.jsonl", '{"text": "a"}\n{oops\n', "b.jsonl:2: malformed JSON"),
    ("b.json", '["a",', "b.json: malformed JSON"),
])  # fmt: skip
def test_bad_files_name_the_place(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DocumentFileError) as e:
        read_documents(tmp_path / name)
    assert all(part in str(e.value) for part in message.split("|")) and "\n" not in str(e.value)


def test_not_utf8_and_missing(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DocumentFileError, match="not UTF-8 text \\(byte 3\\)"):
        read_documents(tmp_path / "x.txt")
    with pytest.raises(DocumentFileError, match="no such file"):
        read_documents(tmp_path / "nope.jsonl")
