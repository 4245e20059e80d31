"""The sft, sft-fim and dpo modes through the real preprocessing driver, read back with our datasets."""

import json

import numpy as np
import pytest

import megatron_qwen.data.preprocess.pipeline as preprocess
from megatron_qwen.data.formats.chat import encode_conversation
from megatron_qwen.data.preprocess.cli import build_parser
from megatron_qwen.training.datasets.preference import PreferenceDataset, collate_pairs
from megatron_qwen.training.datasets.sft import PackedSFTDataset

EOD, IM_START, IM_END = 151643, 151644, 151645
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = 151659, 151660, 151661
LEAKED = "the quick brown fox jumps over the lazy dog and then runs far away"


def run(tok, tmp_path, monkeypatch, mode, records, *extra):
    """Preprocess `records` in-process with the session tokenizer; returns (report, prefix)."""
    monkeypatch.setattr(preprocess, "load_tokenizer", lambda *a, **k: tok)
    src = tmp_path / f"{mode}.jsonl"
    src.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    prefix = tmp_path / mode
    options = build_parser().parse_args(["--mode", mode, "--input", str(src), "--output-prefix", str(prefix),
                                         "--tokenizer", "unused", "--no-progress", *extra])
    return preprocess.run(options), str(prefix)


def chat(*turns, **extra):
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns)], **extra}


def test_sft_mode_writes_conversations_masks_and_counts_what_it_skips(tok, tmp_path, monkeypatch):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": LEAKED}) + "\n")
    good = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}], "score": 0.9}
    long_chat = chat("q1", "short answer", "q2 " + "word " * 80, "long answer " * 20, score=1)
    records = [
        good,
        chat("Write a loop.", "for i in range(3):\n    print(i)", score=0.7),
        long_chat,                                                         # truncated after its first answer
        {"messages": [{"role": "tool", "content": "x"}], "score": 1},
        {"messages": [{"role": "user", "content": "only a question"}], "score": 1},
        chat("low quality", "meh", score=0.1),
        chat("no score", "x"),
        chat(f"Explain: {LEAKED}.", "ok", score=1),
        "{not json",
    ]
    report, prefix = run(tok, tmp_path, monkeypatch, "sft", records, "--min-score", "0.5", "--sft-seq-length", "64",
                         "--decontaminate", f"toy={bench}")
    assert report["documents"] == 3
    assert report["skipped"]["by_reason"] == {
        "bad conversation: messages[i].role is 'tool'; supported roles: system, user, assistant": 1,
        "no assistant turn to train on": 1, "score below threshold": 1, "missing score field 'score'": 1,
        "decontaminated:toy": 1, "malformed JSON": 1}
    assert report["counters"] == {"sft_truncated_turns": 1}
    assert report["decontamination"]["removed_total"] == 1

    ds = PackedSFTDataset(prefix, 64, EOD, shuffle=False, pack=False)
    for k, record in enumerate(records[:2]):
        ids, mask = ds.conversation(k)
        want_ids, want_mask = encode_conversation(record["messages"], tok)
        assert ids.tolist() == want_ids.tolist() and mask.tolist() == want_mask.tolist()
    ids, mask = ds.conversation(2)
    assert tok.decode(ids) == "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\nshort answer<|im_end|>\n"
    assert ids[0] == IM_START and tok.decode(ids[mask == 1]) == "short answer<|im_end|>"


def test_dpo_mode_writes_one_document_of_two_sequences_per_pair(tok, tmp_path, monkeypatch):
    history = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]
    records = [
        {"prompt": "Say yes.", "chosen": "Yes.", "rejected": "No."},
        {"prompt": history, "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
        {"prompt": "same", "chosen": "x", "rejected": "x"},
        {"prompt": history[:3], "chosen": "a", "rejected": "b"},
        {"prompt": "missing rejected", "chosen": "a"},
    ]
    report, prefix = run(tok, tmp_path, monkeypatch, "dpo", records)
    assert report["documents"] == 2 and report["sequences"] == 4
    assert report["skipped"]["by_reason"] == {
        "bad conversation: chosen and rejected are identical": 1,
        "bad conversation: prompt[i] has role 'assistant'; the prompt must end with a user turn": 1,
        "bad conversation: missing field 'rejected'": 1}
    pairs = PreferenceDataset(prefix)
    assert len(pairs) == 2
    pair = pairs[1]
    for side, answer in (("chosen", "4"), ("rejected", "5")):
        ids, mask = pair[side]
        want, _ = encode_conversation(history + [{"role": "assistant", "content": answer}], tok)
        assert ids.tolist() == want.tolist()
        assert tok.decode(ids[mask == 1]) == f"{answer}<|im_end|>"        # history answers are not trained
    batch = collate_pairs([pairs[0], pairs[1]], 48, EOD)
    assert batch["tokens"].shape == (4, 48) and batch["num_pairs"] == 2
    rows = [tok.decode(batch["labels"][r][batch["loss_mask"][r] == 1]) for r in range(4)]
    assert rows == ["Yes.<|im_end|>", "4<|im_end|>", "No.<|im_end|>", "5<|im_end|>"]   # chosen rows first
    with pytest.raises(ValueError, match="pair 0 of the batch: chosen has 35 tokens"):
        collate_pairs([pairs[1]], 8, EOD)
    with pytest.raises(ValueError, match="several sequences|exactly two"):
        PackedSFTDataset(prefix, 64, EOD)


PY = "import os\n\ndef size(path):\n    total = 0\n    for name in os.listdir(path):\n        total += len(name)\n    return total\n"
JAVA = "class A {\n  int twice(int x) {\n    int y = x * 2;\n    return y;\n  }\n}\n"
JS = "function add(a, b) {\n  const s = a + b;\n  return s;\n}\nconsole.log(add(1, 2));\n"
CPP = "int twice(int x) {\n  int y = x * 2;\n  return y;\n}\n"


def test_sft_fim_mode_renders_both_formats_and_skips_unparseable_files(tok, tmp_path, monkeypatch):
    records = [{"text": PY, "path": "pkg/util.py"}, {"text": JAVA, "path": "A.java"}, {"text": JS, "lang": "js"},
               {"text": CPP, "language": "C++"}, {"text": "def broken(:\n", "path": "b.py"},
               {"text": "fn main() {}", "path": "main.rs"}, {"path": "empty.py"}]
    report, prefix = run(tok, tmp_path, monkeypatch, "sft-fim", records, "--ast-fim-per-file", "2",
                         "--ast-fim-chat-rate", "0.5", "--seed", "7")
    counters = report["counters"]
    assert report["skipped"]["by_reason"] == {"unparseable python file": 1, "unknown language": 1,
                                              "missing field 'text'": 1}
    assert report["documents"] == counters["ast_fim_samples"] == 8 and report["fim_share"] == 1.0
    assert counters["ast_fim_format:chat"] + counters["ast_fim_format:fim"] == 8
    assert counters["ast_fim_format:chat"] > 0 and counters["ast_fim_format:fim"] > 0
    assert {k for k in counters if k.startswith("ast_fim_language:")} == {
        "ast_fim_language:python", "ast_fim_language:java", "ast_fim_language:javascript", "ast_fim_language:cpp"}
    sources = {PY, JAVA, JS, CPP}
    ds = PackedSFTDataset(prefix, 512, EOD, pack=False, shuffle=False)
    for k in range(report["documents"]):
        ids, mask = ds.conversation(k)
        if ids[0] == FIM_PREFIX:
            m = int(np.flatnonzero(ids == FIM_MIDDLE)[0])
            s = int(np.flatnonzero(ids == FIM_SUFFIX)[0])
            prefix_text, suffix_text = tok.decode(ids[1:s]), tok.decode(ids[s + 1:m])
            middle = tok.decode(ids[m + 1:-1])
            assert prefix_text + middle + suffix_text in sources and ids[-1] == EOD
            assert mask.tolist() == [0] * (m + 1) + [1] * (len(ids) - m - 1)
        else:
            assert ids[0] == IM_START and ids[-2] == IM_END
            answer = tok.decode(ids[mask == 1])
            assert answer.startswith("```") and answer.endswith("```<|im_end|>")


def test_fit_pair_reports_the_worse_outcome_and_drops_if_either_side_would_be():
    from megatron_qwen.data.formats.chat import Segment
    from megatron_qwen.data.formats.preference import fit_pair

    def segs(answer):
        return [Segment(np.arange(5), False, 0), Segment(np.arange(2), False, 1), Segment(np.arange(answer), True, 1)]

    assert fit_pair(segs(3), segs(4), 20)[1] == "fits"
    assert fit_pair(segs(3), segs(20), 12)[1] == "truncated_tokens"
    assert fit_pair(segs(3), segs(20), 12, "drop") == (None, "dropped")
    assert fit_pair(segs(3), segs(3), 7) == (None, "dropped")      # no answer token would remain


@pytest.mark.parametrize("mode", ["sft-fim", "sft"])
def test_thread_workers_write_what_one_worker_writes(qwen, tmp_path, monkeypatch, mode):
    """With the gigatoken encoder the workers are threads (shared tokenizer, per-thread tree-sitter parsers)."""
    if mode == "sft":
        records = [chat(f"question {k}", f"answer {k} " * k) for k in range(40)]
    else:
        records = [{"text": PY, "path": "pkg/util.py"}, {"text": JAVA, "path": "A.java"}, {"text": JS, "lang": "js"},
                   {"text": CPP, "language": "C++"}] * 10
    outputs = []
    for workers in ("1", "2"):
        (tmp_path / workers).mkdir()
        _, prefix = run(qwen, tmp_path / workers, monkeypatch, mode, records, "--workers", workers,
                        "--chunk-bytes", "600", "--ast-fim-chat-rate", "0.5")
        outputs.append([open(f"{prefix}_{k}_document.{e}", "rb").read() for k in ("text", "loss_mask")
                        for e in ("bin", "idx")])
    assert qwen.encoder_name == "gigatoken" and outputs[0] == outputs[1]
