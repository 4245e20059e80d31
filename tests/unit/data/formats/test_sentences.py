"""text/math modes: Punkt trained on the input itself, one sequence per sentence (Megatron's --split-sentences)."""

from __future__ import annotations

from megatron_qwen.data.formats.sentences import SentenceSplitter, train_punkt
from megatron_qwen.data.indexed import read_documents

PROSE = ("Dr. Smith went to Washington. He arrived at 5 p.m. on Monday. The meeting was long! "
         "Was it useful? Nobody knew.\nThe end.")


def test_punkt_trained_on_input_splits_sentences_without_downloads():
    corpus = [PROSE] * 20 + ["Mr. Jones met Dr. Smith. They talked."] * 20
    splitter = SentenceSplitter(train_punkt(corpus))
    assert splitter.split(PROSE) == [
        "Dr. Smith went to Washington.", "He arrived at 5 p.m. on Monday.", "The meeting was long!",
        "Was it useful?", "Nobody knew.", "The end."]


def test_keep_newlines_keeps_all_text():
    splitter = SentenceSplitter(train_punkt([PROSE] * 5), keep_newlines=True)
    parts = splitter.split(PROSE)
    assert "".join(parts) == PROSE and parts[-2].endswith("knew.\n")


def test_text_mode_split_sentences_writes_one_sequence_per_sentence(qwen, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from tests.unit.data.helpers import run_mode

    records = [{"text": PROSE}] * 10 + [{"text": "One sentence only."}]
    report, prefix = run_mode(qwen.path, tmp_path, "text", records, "--split-sentences", "--append-eod")
    ds = IndexedDataset(f"{prefix}_text_sentence")
    assert ds.document_indices.tolist()[:3] == [0, 6, 12] and len(ds.document_indices) == 12
    assert ds[0].tolist() == qwen.encode_raw("Dr. Smith went to Washington.")
    assert ds[5].tolist() == qwen.encode_raw("The end.") + [151643]  # EOD joins the last sentence
    assert report["sequences"] == 61 and report["documents"] == 11
    assert not (tmp_path / "out_text_document.bin").exists()


def test_math_mode_without_splitting_is_one_sequence_per_document(qwen, tmp_path):
    from tests.unit.data.helpers import run_mode

    report, prefix = run_mode(qwen.path, tmp_path, "math", [{"text": "Let $x^2 = 4$. Then $x = \\pm 2$."}],
                              "--append-eod")
    [doc] = read_documents(f"{prefix}_text_document")
    assert doc.tolist() == qwen.encode_raw("Let $x^2 = 4$. Then $x = \\pm 2$.") + [151643]
    assert report["mode"] == "math"
