"""datatrove pipeline steps for this project's formats: code-dump readers, decontamination, the indexed writer.

Why it exists: datatrove runs the corpus pipeline (sharding, executors, completion markers, MinHash), but
the records, the benchmark decontamination and the formatting + tokenization are this project's own. The
readers turn the two code-dump shapes of `megatron-qwen preprocess` (one source file per JSONL record with
`path` / `repository` / `language` fields, and one repository per record `{"name", "files"}`) into
datatrove `Document`s; the writer hands documents to the very functions `preprocess` uses
(`assemble.process_chunk` with a registered mode and the fast encoder) and writes one indexed dataset per
task with `IndexedWriter` (temporary names until the task's end, so a killed task leaves no shard).

Every record gets a `record_number` (a 63-bit hash of its source file and line) in its metadata. The
writer seeds FIM from it, so the tokens of a record never depend on how records are sharded; `preprocess
--record-number-key record_number` reproduces them from a JSONL of the surviving records.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.utils.word_tokenizers import WordTokenizer

RECORD_NUMBER = "record_number"
STAGES = ("filter", "exact_find", "exact_filter", "minhash_buckets", "minhash_cluster", "write")  # pipeline.py
TEXT_MODES = ("file", "text", "math")  # one record -> one document
MODES = (*TEXT_MODES, "repo")


def record_number(source: str, line: int | str) -> int:
    """A stable number for a raw record: its source file (relative to the input folder) and line."""
    digest = hashlib.blake2b(f"{source}\0{line}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _file_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
    text = data.pop(self.text_key, None)
    data.pop("metadata", None)
    return {"text": text if isinstance(text, str) else "", "id": f"{path}/{id_in_file}",
            "metadata": {**data, RECORD_NUMBER: record_number(path, id_in_file)}}


def _repo_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
    files = data.get("files")
    files = [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []
    name = data.get("name", data.get("repo_name"))
    text = "\n".join(f.get("content", "") for f in files if isinstance(f.get("content"), str))
    return {"text": text, "id": f"{path}/{id_in_file}",
            "metadata": {"name": name, "files": files, RECORD_NUMBER: record_number(path, id_in_file)}}


class CodeFileReader(JsonlReader):
    """JSONL code dumps, one source file per record (`content` + `path`, `repository`, `language`, ...)."""

    name = "📄 code files"

    def __init__(self, data_folder, text_key: str = "content", glob_pattern: str | None = None, **kwargs):
        super().__init__(data_folder, text_key=text_key, adapter=_file_adapter, glob_pattern=glob_pattern,
                         **kwargs)


class RepoReader(JsonlReader):
    """JSONL repository records `{"name": ..., "files": [{"path", "content"}, ...]}`, one per line."""

    name = "📦 repositories"

    def __init__(self, data_folder, glob_pattern: str | None = None, **kwargs):
        super().__init__(data_folder, adapter=_repo_adapter, glob_pattern=glob_pattern, **kwargs)


class CodeWordTokenizer(WordTokenizer):
    """Words for MinHash shingles of code: datatrove has already lower-cased the text, replaced numbers and
    removed punctuation, so the words are the whitespace-separated identifiers and keywords (no spaCy)."""

    def __init__(self):
        super().__init__("code")

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return text.splitlines()

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        import re

        return [m.span() for m in re.finditer(r"\S+", text)]


class CodeMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signature step with shingles hashed as UTF-8 bytes by xxh64. datatrove's own
    `get_shingles` hands `str` to its xxhash wrapper, which xxhash >= 4 refuses; its sha1 option works but
    is the largest cost of the pipeline. Same shingles (normalised text, `n_grams` consecutive words)."""

    def get_shingles(self, text: str) -> np.ndarray:
        from datatrove.utils.text import simplify_text
        from xxhash import xxh64_intdigest

        words = self.word_tokenizer.word_tokenize(simplify_text(text, self.config.norm_config))
        n = self.config.n_grams
        count = max(0, len(words) - n + 1)
        return np.fromiter((xxh64_intdigest(" ".join(words[k:k + n]).encode("utf-8", "surrogatepass"))
                            for k in range(count)), dtype=np.uint64, count=count).reshape((-1, 1))


class DecontaminationFilter(BaseFilter):
    """Drop documents sharing a word 10-gram with a benchmark (`data/decontamination`), reason per benchmark."""

    name = "🧪 decontamination"

    def __init__(self, specs: list[str], exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.specs = list(specs)
        self._decontam = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._decontam is None:
            from megatron_qwen.data.decontamination.ngrams import Decontaminator

            self._decontam = Decontaminator.from_specs(self.specs)
        hit = self._decontam.find(doc.text)
        if hit:
            doc.metadata["decontaminated_ngram"] = hit.ngram
            return False, f"decontaminated:{hit.benchmark}"
        return True


def mode_options(mode: str, tokenizer: str, seed: int, fim_rate: float = 0.5, fim_spm_rate: float = 0.0,
                 fim_line_level: bool = False, max_tokens: int | None = None):
    """The `preprocess` options of `mode` (its parser's defaults plus these values)."""
    from megatron_qwen.data.preprocess.cli import build_parser

    argv = ["--mode", mode, "--output-prefix", "unused", "--tokenizer", tokenizer, "--input", "unused",
            "--seed", str(seed), "--fim-rate", str(fim_rate), "--fim-spm-rate", str(fim_spm_rate),
            "--record-number-key", RECORD_NUMBER]
    if fim_line_level:
        argv.append("--fim-line-level")
    if mode in ("text", "math"):
        argv.append("--append-eod")
    if mode == "repo" and max_tokens:
        argv += ["--max-tokens", str(max_tokens)]
    return build_parser().parse_args(argv)


def doc_record(doc: Document, mode: str) -> dict:
    """The `preprocess` record of a document (what the mode function reads)."""
    number = doc.metadata[RECORD_NUMBER]
    if mode == "repo":
        return {"name": doc.metadata.get("name"), "files": doc.metadata.get("files", []), RECORD_NUMBER: number}
    return {"text": doc.text, RECORD_NUMBER: number}


class IndexedShardWriter(PipelineStep):
    """Format + tokenize with a `preprocess` mode and write `{folder}/{rank:05d}_{key}_document.{bin,idx}`.

    Also writes `{rank:05d}.docs.jsonl` (id, record number, source path of each written record, in order)
    and `{rank:05d}.json` (documents, tokens, skipped by reason). All of it appears only when the task
    ends; a task that dies leaves temporary files, which the next attempt removes.
    """

    type = "💽 - WRITER"
    name = "🧱 indexed shards"

    def __init__(self, output_folder: str, mode: str, tokenizer: str, seed: int, fim_rate: float = 0.5,
                 fim_spm_rate: float = 0.0, fim_line_level: bool = False, max_tokens: int | None = None,
                 decontaminate: list[str] | None = None, batch_bytes: int = 1 << 20):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"corpus mode {mode!r}: choose one of {', '.join(MODES)}")
        self.output_folder = str(output_folder)
        self.mode, self.tokenizer = mode, tokenizer
        self.option_args = dict(seed=seed, fim_rate=fim_rate, fim_spm_rate=fim_spm_rate,
                                fim_line_level=fim_line_level, max_tokens=max_tokens)
        self.decontaminate = list(decontaminate or [])
        self.batch_bytes = batch_bytes

    def _state(self):
        from megatron_qwen.data.preprocess.assemble import WorkerState
        from megatron_qwen.data.preprocess.modes.registry import ModeContext, get_mode
        from megatron_qwen.data.tokenizer.qwen import load_tokenizer

        spec = get_mode(self.mode)
        options = mode_options(self.mode, self.tokenizer, **self.option_args)
        tokenizer = load_tokenizer(self.tokenizer, fast=True, require=spec.required_tokens)
        resources = spec.prepare(options, tokenizer, lambda: iter(())) if spec.prepare else {}
        decontam = None
        if self.decontaminate and spec.decontam_self:  # repo mode checks each file itself
            from megatron_qwen.data.decontamination.ngrams import Decontaminator

            decontam = Decontaminator.from_specs(self.decontaminate)
        ctx = ModeContext(tokenizer, options, resources, decontam, seed=options.seed)
        keys = spec.outputs(options) if spec.outputs else ["text"]
        return spec, WorkerState(spec, ctx, keys, record_number_key=RECORD_NUMBER), tokenizer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from collections import Counter

        from megatron_qwen.data.indexed import token_dtype, write_atomic_text
        from megatron_qwen.data.preprocess.assemble import Chunk, process_chunk
        from megatron_qwen.data.preprocess.pipeline import OutputWriters

        folder = Path(self.output_folder)
        folder.mkdir(parents=True, exist_ok=True)
        prefix = str(folder / f"{rank:05d}")
        for stale in glob.glob(f"{glob.escape(prefix)}[._]*.tmp-*"):  # left by an attempt that was killed
            os.remove(stale)
        spec, state, tokenizer = self._state()
        outputs = OutputWriters(prefix, state.output_keys, "document", token_dtype(tokenizer.vocab_size),
                                spec.loss_mask)
        docs_tmp = f"{prefix}.docs.jsonl.tmp-{os.getpid()}"
        totals = Counter(documents=0, tokens=0, records=0)
        skipped: Counter = Counter()
        try:
            with open(docs_tmp, "w", encoding="utf-8") as docs_file:
                batch: list[Document] = []
                size = 0

                def flush():
                    records = [doc_record(d, self.mode) for d in batch]
                    chunk = Chunk(f"task {rank}", 1, 0, records, size)
                    with self.track_time():
                        result = process_chunk(chunk, state)
                    outputs.add(result)
                    written = [d for d, r in zip(batch, records) if self.mode == "repo" or r["text"]]
                    if self.mode in TEXT_MODES and result.documents != len(written):
                        raise RuntimeError(f"task {rank}: {len(written)} records gave {result.documents} documents")
                    for d in written:
                        docs_file.write(json.dumps({"id": d.id, RECORD_NUMBER: d.metadata[RECORD_NUMBER],
                                                    "path": d.metadata.get("path")}) + "\n")
                    totals["documents"] += result.documents
                    totals["tokens"] += result.tokens
                    totals["records"] += result.records
                    skipped.update(result.skipped)
                    self.stat_update("documents", value=result.documents)
                    self.stat_update("tokens", value=result.tokens)

                for doc in data:
                    batch.append(doc)
                    size += len(doc.text)
                    if size >= self.batch_bytes:
                        flush()
                        batch, size = [], 0
                if batch:
                    flush()
            outputs.commit()
            os.replace(docs_tmp, f"{prefix}.docs.jsonl")
        except BaseException:
            outputs.abort()
            if os.path.exists(docs_tmp):
                os.remove(docs_tmp)
            raise
        summary = {**totals, "skipped": dict(skipped), "outputs": outputs.paths}
        write_atomic_text(f"{prefix}.json", json.dumps(summary, indent=2) + "\n")
        yield from ()  # the last step of its stage: nothing goes further
