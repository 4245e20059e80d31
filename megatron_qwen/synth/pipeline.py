"""The synthesis pipeline: code snippets -> instructions -> N answers + unit tests -> verification ->
judge scores -> rejection-sampled SFT records and preference pairs, decontaminated, with a report.

Every count in the report is over one unit and adds up (docs/synth.md):
  snippets      = instructions + dropped snippets (unsupported_language, empty_snippet, request_failed,
                  empty_instruction)
  answers       = kept + every answer drop reason (verification reasons, low_score, no_tests)
  instructions  = sft written + sft drops = pairs written + pair drops
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from megatron_qwen.data.decontamination.ngrams import Decontaminator
from megatron_qwen.data.formats.ast_fim import record_language
from megatron_qwen.synth.client import Client, RequestBudgetExhausted, RequestFailed
from megatron_qwen.synth.judge import both_orders, checklist_size, parse_checklist, parse_verdict
from megatron_qwen.synth.prompts import DISPLAY, LANGUAGE_NOTES, render
from megatron_qwen.synth.verify import (
    LANGUAGES,
    PASSED,
    STATIC_OK,
    Check,
    Verifier,
    extract_code,
    parse_problem,
    self_containment_problem,
)

REJECTABLE = ("parse_error", "compile_error", "failed_test", "timeout", "crashed")
"""Answers that may be the rejected side of an execution pair: they failed to parse, compile or pass."""


@dataclass
class Settings:
    model: str
    judge_model: str
    judge_url: str | None = None
    samples: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 1234
    max_tokens: int = 1024
    judge_max_tokens: int = 256
    min_score: float = 0.6
    concurrency: int = 8
    progress: bool = False


@dataclass
class Snippet:
    source_id: str
    language: str
    code: str
    path: str | None = None


@dataclass
class Answer:
    index: int
    text: str
    code: str
    request_key: str
    outcome: str = ""
    detail: str = ""
    score: float | None = None
    score_key: str | None = None


@dataclass
class Item:
    """One instruction and everything made for it."""

    snippet: Snippet
    instruction: str
    instruction_key: str
    answers: list[Answer] = field(default_factory=list)
    answers_key: str | None = None
    tests: str | None = None
    tests_key: str | None = None
    tests_problem: str | None = None


@dataclass
class Result:
    sft: list[dict]
    pairs: list[dict]
    drops: list[dict]
    records: list[dict]
    report: dict


def snippets_from_records(records: Iterable[tuple[int, dict]]) -> tuple[list[Snippet], list[dict]]:
    """(line number, JSON record with content/language/path) -> snippets, and drops for unusable ones."""
    snippets, drops = [], []
    for line_no, record in records:
        source_id = str(record.get("id") or record.get("path") or f"line{line_no}")
        code = record.get("content") if isinstance(record.get("content"), str) else record.get("text")
        language = record_language(record)
        if language not in LANGUAGES:
            drops.append({"level": "snippet", "source_id": source_id, "reason": "unsupported_language",
                          "detail": str(record.get("language") or record.get("lang") or record.get("path"))})
        elif not isinstance(code, str) or not code.strip():
            drops.append({"level": "snippet", "source_id": source_id, "reason": "empty_snippet", "detail": ""})
        else:
            snippets.append(Snippet(source_id, language, code, record.get("path")))
    return snippets, drops


class Pipeline:
    def __init__(self, client: Client, verifier: Verifier, templates: dict[str, str], settings: Settings,
                 decontaminator: Decontaminator | None = None):
        self.client = client
        self.verifier = verifier
        self.templates = templates
        self.s = settings
        self.decontaminator = decontaminator
        self.items_checklist = checklist_size(templates["score"])
        if self.items_checklist == 0:
            raise ValueError("the score prompt has no numbered checklist items ('1. ...')")

    # -- requests -------------------------------------------------------------------------------------------
    def _map(self, fn: Callable, items: Sequence, description: str) -> list:
        """fn over items with at most `concurrency` requests in flight; results in input order."""
        if not items:
            return []
        bar = None
        if self.s.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc=description, unit="req")
        out = [None] * len(items)
        with ThreadPoolExecutor(max_workers=self.s.concurrency, thread_name_prefix="synth") as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                for i, future in enumerate(futures):
                    out[i] = future.result()
                    if bar is not None:
                        bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                if bar is not None:
                    bar.close()
        return out

    def _ask(self, prompt: str, *, judge: bool = False, **sampling) -> tuple[str | None, list[str] | str]:
        """(key, texts), or (None, error message) when the request failed for good."""
        body = self.client.body(prompt, model=self.s.judge_model if judge else self.s.model,
                                max_tokens=self.s.judge_max_tokens if judge else self.s.max_tokens, **sampling)
        try:
            return self.client.complete(body, url=self.s.judge_url if judge else None)
        except RequestFailed as err:
            return None, str(err)

    # -- the run --------------------------------------------------------------------------------------------
    def run(self, snippets: Sequence[Snippet], early_drops: Sequence[dict] = ()) -> Result:
        """Every step over all snippets in turn; `records` is the request log, `drops` says what was left out
        at which level and why."""
        drops: list[dict] = list(early_drops)
        records: list[dict] = []
        items = self._instructions(snippets, records, drops)
        self._answers_and_tests(items, records, drops)
        items_with_answers = [it for it in items if it.answers_key is not None]
        flat = [(it, a) for it in items_with_answers for a in it.answers]
        self._verify_and_score(flat, records, drops)
        sft, pairs = self._datasets(items_with_answers, records, drops)
        report = self._report(len(snippets) + len(early_drops), items, items_with_answers, flat, sft, pairs, drops)
        return Result(sft, pairs, drops, records, report)

    def _instructions(self, snippets: Sequence[Snippet], records: list[dict], drops: list[dict]) -> list[Item]:
        """Step 1: an instruction from each snippet's code."""
        replies = self._map(lambda sn: self._ask(render(self.templates["instruction"], language=DISPLAY[sn.language],
                                                        code=sn.code)), snippets, "instructions")
        items: list[Item] = []
        for sn, (key, texts) in zip(snippets, replies):
            if key is None:
                drops.append({"level": "snippet", "source_id": sn.source_id, "reason": "request_failed",
                              "step": "instruction", "detail": texts})
                continue
            text = (texts[0] if texts else "").strip()
            records.append(self._record("instruction", sn, key, self.s.model, text=text))
            if not text:
                drops.append({"level": "snippet", "source_id": sn.source_id, "reason": "empty_instruction",
                              "request_key": key})
                continue
            items.append(Item(sn, text, key))
        return items

    def _answers_and_tests(self, items: list[Item], records: list[dict], drops: list[dict]) -> None:
        """Step 2: N answers (in one request) and unit tests for each instruction, stored on the items."""
        def generate(item: Item):
            fields = dict(language=DISPLAY[item.snippet.language], instruction=item.instruction,
                          language_note=LANGUAGE_NOTES[item.snippet.language])
            answers = self._ask(render(self.templates["answer"], **fields), n=self.s.samples,
                                temperature=self.s.temperature, top_p=self.s.top_p, seed=self.s.seed)
            tests = self._ask(render(self.templates["tests"], **fields))
            return answers, tests

        generated = self._map(generate, items, "answers+tests")
        for item, ((a_key, a_texts), (t_key, t_texts)) in zip(items, generated):
            lang = item.snippet.language
            if a_key is None:
                item.answers_key = None
                item.tests_problem = "answer request failed"
                drops.append({"level": "instruction", "source_id": item.snippet.source_id, "reason": "request_failed",
                              "step": "answer", "detail": a_texts})
            else:
                item.answers_key = a_key
                item.answers = [Answer(i, t, extract_code(t, lang), a_key) for i, t in enumerate(a_texts)]
            if t_key is None:
                item.tests_problem = f"tests request failed: {t_texts}"
            else:
                item.tests_key = t_key
                tests = extract_code(t_texts[0] if t_texts else "", lang)
                problem = ("empty" if not tests.strip() else
                           parse_problem(tests, lang) or self_containment_problem(tests, lang))
                if problem:
                    item.tests_problem = f"tests unusable: {problem}"
                else:
                    item.tests = tests
                records.append(self._record("tests", item.snippet, t_key, self.s.model, code=tests,
                                            usable=item.tests is not None, problem=item.tests_problem))

    def _verify_and_score(self, flat: list[tuple[Item, Answer]], records: list[dict], drops: list[dict]) -> None:
        """Steps 3 and 4: static checks and the sandbox (answers with tests), then checklist scores of every
        answer that passed its tests (or, without tests, its static checks); each answer ends with an outcome."""
        verdicts = self.verifier.verify([Check(a.code, it.snippet.language, it.tests) for it, a in flat])
        for (_it, a), v in zip(flat, verdicts):
            a.outcome, a.detail = v.outcome, v.detail
        to_score = [(it, a) for it, a in flat if a.outcome in (PASSED, STATIC_OK)]

        def score(pair):
            it, a = pair
            return self._ask(render(self.templates["score"], language=DISPLAY[it.snippet.language],
                                    instruction=it.instruction, answer=a.code), judge=True)

        for (_it, a), (key, texts) in zip(to_score, self._map(score, to_score, "scores")):
            a.score_key = key
            a.score = None if key is None else parse_checklist(texts[0] if texts else "", self.items_checklist)
            if a.outcome == PASSED:
                if a.score is None or a.score < self.s.min_score:
                    a.outcome = "low_score"
                    a.detail = "judge request failed" if key is None else (
                        "unreadable checklist" if a.score is None else f"score {a.score:.2f} < {self.s.min_score}")
                else:
                    a.outcome = "kept"
        for it, a in flat:
            if a.outcome == STATIC_OK:
                a.outcome, a.detail = "no_tests", it.tests_problem or "no tests"
            records.append(self._record("answer", it.snippet, a.request_key, self.s.model, index=a.index, code=a.code,
                                        outcome=a.outcome, detail=a.detail, score=a.score, score_key=a.score_key,
                                        tests_key=it.tests_key))
            if a.outcome != "kept":
                drops.append({"level": "answer", "source_id": it.snippet.source_id, "reason": a.outcome,
                              "detail": a.detail, "request_key": a.request_key, "index": a.index})

    def _datasets(self, items: list[Item], records: list[dict], drops: list[dict]) -> tuple[list[dict], list[dict]]:
        """Steps 5 and 6: the rejection-sampled SFT records and the preference pairs, both decontaminated."""
        sft, pairs = [], []
        for it in items:
            record, reason = self._sft(it)
            if record is not None:
                reason = self._contaminated(record)
            if reason:
                drops.append({"level": "sft", "source_id": it.snippet.source_id, "reason": reason})
            else:
                sft.append(record)
        for it, (record, reason, extra) in zip(items, self._map(self._pair, items, "pairs")):
            if extra:
                records.append(extra)
            if record is not None:
                reason = self._contaminated(record)
            if reason:
                drops.append({"level": "dpo", "source_id": it.snippet.source_id, "reason": reason})
            else:
                pairs.append(record)
        return sft, pairs

    def _record(self, step: str, sn: Snippet, key: str, model: str, **extra) -> dict:
        return {"step": step, "source_id": sn.source_id, "language": sn.language, "request_key": key,
                "model": model, **extra}

    def _provenance(self, it: Item, a: Answer, **extra) -> dict:
        return {"source_id": it.snippet.source_id, "source_path": it.snippet.path, "language": it.snippet.language,
                "model": self.s.model, "judge_model": self.s.judge_model, "instruction_key": it.instruction_key,
                "answer_key": a.request_key, "answer_index": a.index, "tests_key": it.tests_key,
                "score_key": a.score_key, **extra}

    @staticmethod
    def _fenced(it: Item, a: Answer) -> str:
        return f"```{it.snippet.language}\n{a.code}\n```"

    @staticmethod
    def _best(answers: Iterable[Answer]) -> Answer | None:
        """Highest score, the earliest sample on ties."""
        best = None
        for a in answers:
            if best is None or (a.score or 0.0) > (best.score or 0.0):
                best = a
        return best

    def _sft(self, it: Item) -> tuple[dict | None, str | None]:
        if it.tests is None:
            return None, "no_tests"
        best = self._best(a for a in it.answers if a.outcome == "kept")
        if best is None:
            return None, "no_passing_answer"
        return {"messages": [{"role": "user", "content": it.instruction},
                             {"role": "assistant", "content": self._fenced(it, best)}],
                "score": best.score, "provenance": self._provenance(it, best, step="sft")}, None

    def _pair(self, it: Item) -> tuple[dict | None, str | None, dict | None]:
        """(dpo record, None, judge record) or (None, drop reason, judge record)."""
        if it.tests is not None:  # execution decides
            chosen = self._best(a for a in it.answers if a.outcome == "kept")
            if chosen is None:
                return None, "no_passing_answer", None
            rejected = next((a for a in it.answers if a.outcome in REJECTABLE and a.code != chosen.code), None)
            if rejected is None:
                return None, "no_failing_answer", None
            return self._pair_record(it, chosen, rejected, "execution"), None, None
        # no tests: the judge decides, asked in both orders
        candidates: list[Answer] = []
        for a in sorted((a for a in it.answers if a.outcome == "no_tests"), key=lambda a: -(a.score or 0.0)):
            if all(a.code != c.code for c in candidates):
                candidates.append(a)
        if len(candidates) < 2:
            return None, "too_few_candidates", None
        x, y = candidates[0], candidates[-1]

        def ask(answer_a: str, answer_b: str):
            key, texts = self._ask(render(self.templates["pairwise"], language=DISPLAY[it.snippet.language],
                                          instruction=it.instruction, answer_a=answer_a, answer_b=answer_b),
                                   judge=True)
            return (key or ""), (parse_verdict(texts[0]) if key is not None and texts else None)

        verdict = both_orders(ask, x.code, y.code)
        extra = self._record("pairwise", it.snippet, verdict.keys[0], self.s.judge_model, second_key=verdict.keys[1],
                             answers=[x.index, y.index], verdicts=[verdict.first, verdict.second],
                             winner=verdict.winner)
        if verdict.winner is None:
            return None, "judge_disagreed", extra
        chosen, rejected = (x, y) if verdict.winner == 0 else (y, x)
        return self._pair_record(it, chosen, rejected, "judge", verdict_keys=list(verdict.keys)), None, extra

    def _pair_record(self, it: Item, chosen: Answer, rejected: Answer, source: str, **extra) -> dict:
        return {"prompt": it.instruction, "chosen": self._fenced(it, chosen), "rejected": self._fenced(it, rejected),
                "provenance": {**self._provenance(it, chosen, step="dpo", pair_source=source),
                               "rejected_index": rejected.index, "rejected_outcome": rejected.outcome, **extra}}

    def _contaminated(self, record: dict) -> str | None:
        if self.decontaminator is None:
            return None
        hit = self.decontaminator.find_in_record(record, skip_keys=("provenance", "score"))
        return f"contaminated:{hit.benchmark}" if hit else None

    def _report(self, total_snippets, items, with_answers, flat, sft, pairs, drops) -> dict:
        by_level: dict[str, Counter] = {lvl: Counter() for lvl in ("snippet", "instruction", "answer", "sft", "dpo")}
        for d in drops:
            by_level[d["level"]][d["reason"]] += 1
        report = {
            "model": self.s.model, "judge_model": self.s.judge_model, "samples_per_instruction": self.s.samples,
            "min_score": self.s.min_score,
            "snippets": {"total": total_snippets, "instructions": len(items), "dropped": dict(by_level["snippet"])},
            "instructions": {"total": len(items), "with_answers": len(with_answers),
                             "dropped": dict(by_level["instruction"])},
            "answers": {"total": len(flat), "kept": sum(a.outcome == "kept" for _, a in flat),
                        "dropped": dict(by_level["answer"])},
            "tests": {"usable": sum(it.tests is not None for it in with_answers),
                      "unusable": sum(it.tests is None for it in with_answers)},
            "sft": {"candidates": len(with_answers), "written": len(sft), "dropped": dict(by_level["sft"])},
            "dpo": {"candidates": len(with_answers), "written": len(pairs), "dropped": dict(by_level["dpo"]),
                    "from_execution": sum(p["provenance"]["pair_source"] == "execution" for p in pairs),
                    "from_judge": sum(p["provenance"]["pair_source"] == "judge" for p in pairs)},
            "requests": {"sent_new": self.client.new_requests, "http_attempts": self.client.sent,
                         "retried": self.client.retried, "from_cache": self.client.cache_hits},
        }
        if self.decontaminator is not None:
            report["decontamination"] = self.decontaminator.describe()
        report["consistent"] = check_report(report) == []
        return report


def check_report(report: dict) -> list[str]:
    """The sums the report promises; [] when they all hold."""
    problems = []

    def total(part: dict, kept: int, name: str):
        dropped = sum(part["dropped"].values())
        if kept + dropped != part.get("total", part.get("candidates")):
            problems.append(f"{name}: {kept} + {dropped} dropped != {part.get('total', part.get('candidates'))}")

    total(report["snippets"], report["snippets"]["instructions"], "snippets")
    total(report["instructions"], report["instructions"]["with_answers"], "instructions")
    total(report["answers"], report["answers"]["kept"], "answers")
    total(report["sft"], report["sft"]["written"], "sft")
    total(report["dpo"], report["dpo"]["written"], "dpo")
    return problems


def summary(report: dict) -> str:
    """The report as a few readable lines."""
    def reasons(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    r = report
    lines = [
        f"synth: model {r['model']}, judge {r['judge_model']}, {r['samples_per_instruction']} samples per instruction",
        f"snippets     {r['snippets']['total']}: {r['snippets']['instructions']} instructions; dropped: "
        f"{reasons(r['snippets']['dropped'])}",
        f"instructions {r['instructions']['total']}: {r['instructions']['with_answers']} with answers; dropped: "
        f"{reasons(r['instructions']['dropped'])}; tests usable for {r['tests']['usable']}",
        f"answers      {r['answers']['total']}: {r['answers']['kept']} kept; dropped: {reasons(r['answers']['dropped'])}",
        f"sft          {r['sft']['written']} written of {r['sft']['candidates']}; dropped: {reasons(r['sft']['dropped'])}",
        f"dpo          {r['dpo']['written']} pairs ({r['dpo']['from_execution']} by execution, {r['dpo']['from_judge']} "
        f"by the judge) of {r['dpo']['candidates']}; dropped: {reasons(r['dpo']['dropped'])}",
        f"requests     {r['requests']['sent_new']} sent ({r['requests']['http_attempts']} attempts, "
        f"{r['requests']['retried']} retries), {r['requests']['from_cache']} from the cache",
        f"counts add up: {'yes' if r['consistent'] else 'NO: ' + '; '.join(check_report(r))}",
    ]
    return "\n".join(lines)


def to_jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


__all__ = ["Pipeline", "RequestBudgetExhausted", "Result", "Settings", "Snippet", "check_report",
           "snippets_from_records", "summary", "to_jsonl"]
