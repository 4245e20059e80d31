"""The corpus pipeline as datatrove stages: filter -> exact dedup -> MinHash near-dedup -> indexed shards.

Why it exists: one description of the stages serves both executors. Each stage is a datatrove pipeline
run by a `LocalPipelineExecutor` (default) or a `SlurmPipelineExecutor` (`cluster=slurm`), chained with
`depends`; datatrove writes a completion marker per task under `logs/<stage>/completions/`, and a
relaunch runs only the tasks without one. Stages and their folders under `corpus.output`:

1. `filter` (`tasks`): read records -> language ID -> code rules -> decontamination -> quality stages ->
   `work/filtered/<rank>.jsonl.gz` -> exact-dedup signatures (or MinHash signatures without exact dedup).
2. `exact_find` (1 task): datatrove's exact duplicate finder over all signatures.
3. `exact_filter` (`tasks`): drop exact copies -> `work/deduped/<rank>.jsonl.gz` -> MinHash signatures.
4. `minhash_buckets` (`minhash.num_buckets` tasks), 5. `minhash_cluster` (1 task): datatrove's LSH
   buckets and union-find clusters; one document per cluster is kept.
6. `write` (`tasks`): drop near-duplicates -> format + tokenize with a `preprocess` mode ->
   `shards/<rank>_text_document.{bin,idx}`.

Intermediate stages read back exactly their own rank's file (`RankFileReader`): datatrove's dedup steps
address documents by (rank, position), so a rank must see the same documents in the same order as the
stage that wrote the signatures. Every removal is written with its reason to `work/removed/<step>/`.
"""

from __future__ import annotations

import os
from pathlib import Path

from datatrove.executor import SlurmPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from megatron_qwen.config import ClusterConfig, CorpusConfig
from megatron_qwen.corpus.steps import (
    STAGES,  # noqa: F401  (the stage names, in order)
    CodeFileReader,
    CodeMinhashSignature,
    CodeWordTokenizer,
    DecontaminationFilter,
    IndexedShardWriter,
    RepoReader,
)


class RankFileReader(JsonlReader):
    """Reads `<rank:05d>.jsonl.gz` of a folder and nothing else (empty when the rank wrote nothing)."""

    name = "📖 rank file"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        name = f"{rank:05d}.jsonl.gz"
        if not self.data_folder.isfile(name):
            return
        for doc in self.read_file(name):
            self.update_doc_stats(doc)
            self.stat_update("documents")
            yield doc


class CorpusSlurmExecutor(SlurmPipelineExecutor):
    """datatrove's Slurm executor without its extra stats-merging job per stage: that job asks for a fixed
    1 GB per CPU (not every partition grants it), and the corpus report sums the per-task stats itself."""

    def launch_merge_stats(self):
        return None


def _removed_writer(out: Path, step: str) -> JsonlWriter:
    return JsonlWriter(str(out / "work" / "removed" / step), output_filename="${rank}.jsonl.gz")


def exact_content(doc) -> bytes:
    """What exact dedup hashes: the text's UTF-8 bytes (bytes: datatrove picks its hash by this annotation)."""
    return doc.text.encode("utf-8", "surrogatepass")


def _exact_config():
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig

    return ExactDedupConfig(content_getter=exact_content)


def _minhash_config(cfg: CorpusConfig):
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    m = cfg.minhash  # 64-bit xxhash shingles (CodeMinhashSignature hashes bytes)
    return MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket,
                         seed=m.seed, hash_config=HashConfig(precision=64, hash_fc="xxhash"))


def build_stages(cfg: CorpusConfig, extra_write_steps: list | None = None) -> list[tuple[str, list, int]]:
    """[(stage name, datatrove pipeline, tasks)] in order; `extra_write_steps` go before the shard writer."""
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )

    from megatron_qwen.corpus.langid import LanguageFilter
    from megatron_qwen.corpus.quality import QualityStageFilter
    from megatron_qwen.corpus.rules import CodeRuleFilter

    out = Path(cfg.output).resolve()
    work = out / "work"
    inputs = [str(Path(p).resolve()) for p in cfg.input]
    if len(inputs) != 1:
        raise ValueError("corpus.input must name one folder of JSONL(.gz) files (datatrove shards by file)")
    if cfg.input_format == "files":
        reader = CodeFileReader(inputs[0], text_key=cfg.text_key, glob_pattern="**/*.jsonl*")
    elif cfg.input_format == "repos":
        reader = RepoReader(inputs[0], glob_pattern="**/*.jsonl*")
    else:
        raise ValueError(f"corpus.input_format must be 'files' or 'repos', got {cfg.input_format!r}")
    filters: list = []
    if cfg.mode == "file":  # source files; text/math records are prose (quality stages apply to them)
        filters.append(LanguageFilter(cfg.langid, exclusion_writer=_removed_writer(out, "language")))
        filters.append(CodeRuleFilter(cfg.rules, exclusion_writer=_removed_writer(out, "rules")))
    if cfg.decontaminate and cfg.mode != "repo":  # repo mode drops contaminated files itself
        filters.append(DecontaminationFilter(cfg.decontaminate,
                                             exclusion_writer=_removed_writer(out, "decontamination")))
    for k, stage in enumerate(cfg.quality):
        filters.append(QualityStageFilter(stage, k, exclusion_writer=_removed_writer(out, f"quality_{k}")))
    mh = _minhash_config(cfg)
    filtered = JsonlWriter(str(work / "filtered"), output_filename="${rank}.jsonl.gz")
    stages: list[tuple[str, list, int]] = []
    first = [reader, *filters, filtered]
    dedup_source = work / "filtered"
    if cfg.exact_dedup:
        exact = _exact_config()
        first.append(ExactDedupSignature(str(work / "exact_sigs"), config=exact))
        stages.append(("filter", first, cfg.tasks))
        stages.append(("exact_find", [ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"),
                                                      config=exact)], 1))
        third = [RankFileReader(str(work / "filtered")),
                 ExactDedupFilter(str(work / "exact_dups"), config=exact,
                                  exclusion_writer=_removed_writer(out, "exact_dedup")),
                 JsonlWriter(str(work / "deduped"), output_filename="${rank}.jsonl.gz")]
        dedup_source = work / "deduped"
        if cfg.minhash.enabled:
            third.append(CodeMinhashSignature(str(work / "minhash_sigs"), config=mh, language=CodeWordTokenizer()))
        stages.append(("exact_filter", third, cfg.tasks))
    else:
        if cfg.minhash.enabled:
            first.append(CodeMinhashSignature(str(work / "minhash_sigs"), config=mh, language=CodeWordTokenizer()))
        stages.append(("filter", first, cfg.tasks))
    last = [RankFileReader(str(dedup_source))]
    if cfg.minhash.enabled:
        stages.append(("minhash_buckets", [MinhashDedupBuckets(str(work / "minhash_sigs"),
                                                               str(work / "minhash_buckets"), config=mh)],
                       cfg.minhash.num_buckets))
        stages.append(("minhash_cluster", [MinhashDedupCluster(str(work / "minhash_buckets"),
                                                               str(work / "minhash_remove"), config=mh)], 1))
        last.append(MinhashDedupFilter(str(work / "minhash_remove"),
                                       exclusion_writer=_removed_writer(out, "minhash")))
    last += list(extra_write_steps or [])
    last.append(IndexedShardWriter(str(out / "shards"), cfg.mode, cfg.tokenizer, cfg.seed, cfg.fim_rate,
                                   cfg.fim_spm_rate, cfg.fim_line_level, cfg.max_tokens if cfg.mode == "repo"
                                   else None, cfg.decontaminate))
    stages.append(("write", last, cfg.tasks))
    return stages


def make_executors(cfg: CorpusConfig, cluster: ClusterConfig, extra_write_steps: list | None = None):
    """One executor per stage, each depending on the previous one."""
    out = Path(cfg.output).resolve()
    executors = []
    previous = None
    for name, pipeline, tasks in build_stages(cfg, extra_write_steps):
        logs = str(out / "logs" / name)
        if cluster.kind == "slurm":
            if not cluster.partition:
                raise ValueError("cluster.partition: the corpus jobs need a partition (datatrove names one)")
            extra = {a.split("=")[0].lstrip("-"): a.split("=", 1)[1] for a in cluster.sbatch_args if "=" in a}
            if cluster.mem:  # per CPU for the corpus jobs (datatrove asks --mem-per-cpu)
                extra["mem-per-cpu"] = cluster.mem
            ex = CorpusSlurmExecutor(
                pipeline=pipeline, tasks=tasks, workers=cfg.workers if tasks > 1 else 1, time=cfg.slurm_time,
                partition=cluster.partition, cpus_per_task=cluster.cpus_per_task or 1, mem_per_cpu_gb=2,
                job_name=f"corpus_{name}", qos=cluster.qos or "", env_command="\n".join(cluster.setup) or None,
                logging_dir=logs, slurm_logs_folder=str(out / "logs" / "slurm" / name), depends=previous,
                sbatch_args=extra or None, requeue=False, mail_type="NONE")
        elif cluster.kind == "local":
            from datatrove.executor import LocalPipelineExecutor

            ex = LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(cfg.workers, tasks),
                                       logging_dir=logs, depends=previous, start_method="fork")
        else:
            raise ValueError(f"cluster.kind must be 'local' or 'slurm', got {cluster.kind!r}")
        executors.append((name, ex))
        previous = ex
    return executors


def shard_prefixes(cfg: CorpusConfig) -> list[str]:
    """The prefixes of the written shards, in rank order (tasks that wrote no document are left out)."""
    import json

    shards = Path(cfg.output).resolve() / "shards"
    prefixes = []
    for rank in range(cfg.tasks):
        summary = shards / f"{rank:05d}.json"
        if summary.is_file():
            info = json.loads(summary.read_text())
            for key, prefix in sorted(info["outputs"].items()):
                if key != "loss_mask" and info.get("documents"):
                    prefixes.append(prefix)
    return prefixes


def write_blend(cfg: CorpusConfig) -> str:
    """`blend.yaml`: a data config over the shards, weighted by their token counts (a blend, not a merge)."""
    import json

    from megatron_qwen.data.indexed import write_atomic_text

    out = Path(cfg.output).resolve()
    lines = ["# Written by `megatron-qwen corpus`: the shards of this run, weighted by tokens (so sampling",
             "# follows their sizes, as one merged dataset would). Use as a data config, e.g. copy it to",
             "# <config-dir>/data/<name>.yaml, or check it with `megatron-qwen blend-shares --config`.",
             "mock: false", "blend:"]
    for prefix in shard_prefixes(cfg):
        rank_file = Path(prefix).parent / f"{Path(prefix).name[:5]}.json"
        tokens = json.loads(rank_file.read_text())["tokens"]
        lines += [f"  - {tokens * cfg.blend_weight:g}", f"  - {prefix}"]
    path = out / "blend.yaml"
    write_atomic_text(path, "\n".join(lines) + "\n")
    return str(path)


def run_corpus(cfg: CorpusConfig, cluster: ClusterConfig, extra_write_steps: list | None = None) -> dict:
    """Run (or resume) every stage, then write blend.yaml and the report. On Slurm the first call submits the
    jobs and returns; the same command after they finished submits nothing and writes blend and report."""
    if cfg.tasks < 1 or cfg.workers < 1:
        raise ValueError(f"corpus.tasks and corpus.workers must be >= 1, got {cfg.tasks} and {cfg.workers}")
    os.makedirs(Path(cfg.output).resolve(), exist_ok=True)
    executors = make_executors(cfg, cluster, extra_write_steps)
    executors[-1][1].run()  # runs (Local) or submits (Slurm) the chain through `depends`
    if executors[-1][1].get_incomplete_ranks():  # Slurm jobs still to run: run the command again after them
        return {"submitted": [name for name, _ in executors], "output": str(Path(cfg.output).resolve())}
    from megatron_qwen.corpus.report import write_report

    blend = write_blend(cfg)
    report = write_report(cfg)
    report["blend"] = blend
    return report
