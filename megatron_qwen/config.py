"""The typed configuration tree: the single source of truth for every run.

Hydra only composes YAML onto these dataclasses and applies command-line overrides; every cross-field
rule is checked in one place, `validate()`, before any process group exists, and each error names the
fields involved and the fix. Sections are owned by the subsystem that reads them (model/, platform/,
data/, training/, launch/), but they live here so the whole tree can be read in one sitting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the fields and the fix."""


@dataclass
class YarnConfig:
    """YaRN RoPE scaling (HF `rope_scaling: {type: yarn, ...}`); all seven megatron-core `yarn_*` values."""

    enabled: bool = False
    factor: float = 4.0
    original_max_position_embeddings: int = 32768
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    # attention factor = (0.1·mscale·ln(factor) + 1) / (0.1·mscale_all_dim·ln(factor) + 1) = 0.1·ln(factor) + 1
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    correction_range_round_to_int: bool = True


@dataclass
class ModelConfig:
    """Architecture (Hugging Face config.json values) plus how the layers are implemented."""

    name: str = "tiny"
    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 176
    num_attention_heads: int = 4
    num_query_groups: int = 2
    kv_channels: int = 16
    # Embedding rows (HF `vocab_size`): already padded, so Megatron must not pad further.
    vocab_size: int = 512
    tie_word_embeddings: bool = True
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    yarn: YarnConfig = field(default_factory=YarnConfig)
    init_method_std: float = 0.02
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    # "auto": Transformer Engine spec when TE and CUDA are present, else the local spec.
    transformer_impl: str = "auto"
    # Activation recomputation: None, "selective" (core attention) or "full" (whole layers).
    recompute_granularity: str | None = None
    recompute_method: str | None = None  # "uniform" or "block" with full recomputation
    recompute_num_layers: int | None = None
    # FP8 through Transformer Engine (Hopper and newer only): None, "delayed", "tensorwise", "mxfp8", "blockwise".
    fp8_recipe: str | None = None
    fp8_format: str = "hybrid"  # "e4m3" or "hybrid" (e4m3 forward, e5m2 backward)
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"


@dataclass
class ParallelConfig:
    """How the world is split: world_size = tp · pp · cp · dp."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    context_parallel_size: int = 1
    data_parallel_size: int | None = None  # None: derived from the world size
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    cp_comm_type: str = "p2p"  # p2p, all_gather, a2a, a2a+p2p (TE); the local attention all-gathers K/V


@dataclass
class PerfConfig:
    """GPU speed switches. Each one asks for a fusion or an overlap; model/perf.py turns it on only where it
    runs and is exact (CUDA, the kernels it needs, a compatible layout) and says why when it does not. On a CPU
    none of them applies. docs/gpu_performance.md has the table and the comparison with published recipes."""

    bias_activation_fusion: bool = True  # fused SwiGLU
    bias_dropout_fusion: bool = True  # fused residual add (+ dropout)
    masked_softmax_fusion: bool = True  # megatron's fused softmax (local spec's unfused attention path)
    apply_rope_fusion: bool = True  # TE's fused RoPE (bshd and packed thd, CP aware); not with YaRN's mscale
    gradient_accumulation_fusion: bool = True  # wgrad GEMM accumulates into main_grad (needs apex's kernel)
    cross_entropy_fusion: bool = True  # megatron's fused vocab-parallel cross entropy
    attention_backend: str = "auto"  # TE spec: "auto", "flash", "fused", "unfused"
    tp_comm_overlap: bool = True  # TE userbuffers: TP all-gather/reduce-scatter under the GEMMs (needs SP)
    overlap_grad_reduce: bool = True  # DP gradient reduce-scatter/all-reduce under the backward
    overlap_param_gather: bool = True  # distributed optimizer's parameter all-gather under the forward
    overlap_p2p_comm: bool = True  # interleaved pipeline: p2p sends/receives under compute (needs VPP)
    # "none" or "local": megatron-core captures each layer's forward/backward as CUDA graphs (static shapes:
    # not with packed sequences or full recomputation). Off by default: it pins graph memory per layer.
    cuda_graph: str = "none"


@dataclass
class ProfileConfig:
    """A torch profiler trace (and NVTX ranges on GPU, for Nsight Systems) of steps [first, last]."""

    steps: list[int] = field(default_factory=list)  # [first, last] 1-based, inclusive; empty: no profiling
    ranks: list[int] = field(default_factory=lambda: [0])  # global ranks that record
    dir: str | None = None  # None: checkpoint.dir/profile (or ./profile)
    record_shapes: bool = False
    with_stack: bool = False


@dataclass
class ClusterConfig:
    """Where the job runs (read by launch/): `local` runs the stages here, `slurm` submits sbatch jobs."""

    kind: str = "local"  # "local" or "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0  # 0: a CPU job (gloo); with GPUs, one task per GPU
    tasks_per_node: int | None = None  # None: gpus_per_node, or 1 on CPU
    cpus_per_task: int | None = None
    mem: str | None = None  # sbatch --mem, e.g. "0" for the whole node
    time_limit: str = "04:00:00"  # sbatch --time: [days-]hours:minutes:seconds
    # Enroot/pyxis container for srun (None: run in the environment the setup lines prepare).
    container_image: str | None = None
    container_mounts: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (modules, venv, exports)
    sbatch_args: list[str] = field(default_factory=list)  # extra `#SBATCH` options, e.g. "--exclusive"
    srun_args: list[str] = field(default_factory=list)  # extra srun options
    signal_lead_seconds: int = 300  # USR1 reaches the batch shell this long before the time limit
    max_requeues: int = 50  # a stage that keeps stopping early gives up after this many requeues
    max_crash_requeues: int = 2  # a stage that exits with an error is requeued this many times, then fails
    python: str = "python"  # the interpreter inside the job, after the setup lines


@dataclass
class DataConfig:
    """What the model reads: sequence length plus the dataset blend (filled by the training stack)."""

    seq_length: int = 128
    # Megatron blend: [weight, prefix, weight, prefix, ...] or a list of prefixes; None means mock data.
    blend: list[Any] | None = None
    split: str = "98,2,0"
    # Worker processes that build micro-batches ahead of the step (same samples, same order as 0 workers).
    num_workers: int = 0
    prefetch_factor: int = 2  # micro-batches each worker keeps ready
    mock: bool = False
    packed_sequences: bool = False
    eod_token_id: int = 151643  # <|endoftext|>; the document separator GPTDataset masks around
    cache_dir: str | None = None  # GPTDataset index cache (None: next to the data)


@dataclass
class OptimConfig:
    """AdamW with warmup, then cosine or warmup-stable-decay (WSD), and gradient clipping."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # "cosine", "wsd" or "constant"
    wsd_decay_steps: int = 0


@dataclass
class TrainConfig:
    """How long and how wide one stage trains, and how often it logs and evaluates."""

    train_iters: int = 10
    micro_batch_size: int = 2
    global_batch_size: int = 8
    log_interval: int = 1
    eval_interval: int = 0  # 0: no evaluation
    eval_iters: int = 2
    dtype: str = "auto"  # "auto": bf16 on GPU, fp32 on CPU; or "bf16", "fp32"
    # A step whose loss or gradient is not finite is skipped (no update); this many in a row stop the run.
    max_consecutive_skips: int = 3
    # Optional loss-spike rule (0: off): a step whose loss exceeds the mean of the last
    # `loss_spike_window` applied steps by this fraction is skipped and counted the same way.
    loss_spike_margin: float = 0.0
    loss_spike_window: int = 20
    # No completed step for this many seconds: dump every thread's stack and exit 3 (0: no watchdog).
    watchdog_seconds: float = 0.0


@dataclass
class CheckpointConfig:
    """Where checkpoints go, how often, how many are kept, and what a fresh stage starts from."""

    dir: str | None = None  # None: no checkpoints
    save_interval: int = 0  # 0: only at the end
    keep_last: int = 2  # 0: keep all
    # Periodic saves written in the background by megatron-core's async dist-checkpoint writer (the step
    # stalls only while tensors are staged); `latest` still moves only once every rank's files are complete.
    async_save: bool = False
    resume: bool = True  # continue from dir's latest checkpoint when there is one
    # A fresh stage (nothing to resume) may start from weights only: "none", "checkpoint" or "hf".
    init_from: str = "none"
    init_path: str | None = None  # a megatron_qwen checkpoint dir (iteration dir or its parent), or an HF dir


@dataclass
class BenchConfig:
    """Code benchmarks run on the current weights inside training, by generation and execution, logged as
    `eval/<benchmark>/<metric>` (metrics.jsonl, W&B) with a plot beside metrics.jsonl. See docs/generation.md."""

    benchmarks: list[str] = field(default_factory=list)  # e.g. [humaneval, humaneval-sl]; empty: none
    interval: int = 0  # every N steps, and at the end of the stage (0: only at the end)
    limit: int | None = 16  # the first N tasks of each benchmark (None: all)
    max_tokens: int = 128  # new tokens per completion (greedy; pass@1)
    tokenizer: str | None = None  # the tokenizer directory the prompts are encoded with (required)
    workers: int = 2  # concurrent sandboxes scoring the completions


@dataclass
class LoggingConfig:
    """Console metrics and, when a project is set, Weights & Biases (rank: last pipeline stage, first)."""

    wandb_project: str | None = None  # None: W&B disabled
    wandb_name: str | None = None
    wandb_mode: str = "offline"  # "online", "offline" or "disabled"
    wandb_dir: str | None = None  # None: checkpoint.dir (or ./wandb)
    wandb_id: str | None = None  # a fixed run id (e.g. set by the launcher); a checkpoint's id wins on resume
    metrics_file: str | None = None  # JSON lines, one per logged step (None: checkpoint.dir/metrics.jsonl)
    peak_tflops: float | None = None  # None: from the device table (H100 989 bf16, 1979 fp8)


@dataclass
class StageConfig:
    """Which recipe stage this run is; what it changes lives in the other sections it overrides."""

    name: str = "file_pretrain"
    objective: str = "pretrain"  # "pretrain"; "sft" and "dpo" arrive with post-training
    previous: str | None = None  # the stage whose final checkpoint init_from=checkpoint usually points at


@dataclass
class SFTConfig:
    """Stage 3 SFT (training/post/sft.py): conversations from `data.blend` (`--mode sft` prefixes), loss on
    answers only, packed to data.seq_length with cu_seqlens when data.packed_sequences (else padded)."""

    fim_prefix: str | None = None  # an `--mode sft-fim` dataset mixed in at `fim_share` of the samples
    fim_share: float = 0.0  # share of training samples drawn from fim_prefix (0 when the JSONL is pre-mixed)
    overlong: str = "error"  # a conversation longer than seq_length + 1 tokens: "error", "truncate" or "drop"
    valid_prefix: str | None = None  # held-out conversations for train.eval_interval (None: no evaluation)


@dataclass
class DPOConfig:
    """Offline DPO (training/post/dpo.py) on `--mode dpo` pairs in `data.blend` (one prefix)."""

    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO: assumed share of flipped preference labels, in [0, 0.5)
    sft_weight: float = 0.0  # weight of an extra per-token NLL term on the chosen answers
    # Reference log-probs (the frozen start model, i.e. checkpoint.init_path) are computed in one forward-only
    # pass at the start of the stage and kept here; None: checkpoint.dir/reference_logps.pt.
    reference_cache: str | None = None
    # Held-out pairs (an `--mode dpo` prefix) evaluated every train.eval_interval steps over train.eval_iters x
    # train.global_batch_size samples: val_loss (mean DPO loss) and val/rewards/accuracy, margins, log-probs.
    valid_prefix: str | None = None


@dataclass
class PostTrainConfig:
    """Post-training (stage 3): SFT coarse/fine and DPO; read when stage.objective is "sft" or "dpo"."""

    pad_token_id: int | None = None  # padding id (loss-masked); None: data.eod_token_id
    shuffle: bool = True  # shuffle SFT samples / DPO pairs once with the run's seed
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)


LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


@dataclass
class LoRAConfig:
    """Low-rank adapters (model/lora.py): W x + (alpha / rank) · B A dropout(x) on the named linears, base weights
    frozen. `target_modules` uses megatron-core's module names (the fused layers that exist in the model):
    linear_qkv (q/k/v), linear_proj (o), linear_fc1 (gate/up), linear_fc2 (down); export writes PEFT's names."""

    enabled: bool = False
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class CorpusLangIdConfig:
    """Code language identification: extension and shebang rules, then (with `model`) a fastText check."""

    languages: list[str] = field(default_factory=lambda: [
        "python", "javascript", "typescript", "java", "c", "cpp", "go", "rust", "shell", "csharp", "php", "ruby"])
    model: str | None = None  # `megatron-qwen corpus-train-langid` output; None: rules only
    min_confidence: float = 0.5  # fastText probability of the rule label below which a file is dropped
    keep_unknown: bool = False  # keep files no rule recognises (no extension, no shebang)


@dataclass
class CorpusRulesConfig:
    """Rule filters for code files (The Stack family); thresholds, not switches: 0 or null turns one off."""

    max_line_length: int = 1000
    max_mean_line_length: float = 100.0
    min_alnum_fraction: float = 0.25
    max_encoded_fraction: float = 0.5  # share of characters inside base64/hex runs of >= encoded_run_chars
    encoded_run_chars: int = 64
    autogen_markers: list[str] = field(default_factory=lambda: [
        "auto-generated", "autogenerated", "automatically generated", "generated by", "do not edit",
        "code generated by"])
    autogen_header_lines: int = 5  # markers are looked for in the first lines only
    data_extensions: list[str] = field(default_factory=lambda: [
        ".json", ".csv", ".tsv", ".xml", ".yaml", ".yml", ".lock", ".svg", ".min.js", ".map"])


@dataclass
class CorpusQualityStage:
    """One stage of the hierarchical quality filter: keep documents whose score is >= threshold."""

    name: str = "stage"
    model: str = ""  # `megatron-qwen corpus-train-quality` output
    threshold: float = 0.5


@dataclass
class CorpusMinhashConfig:
    """datatrove MinHash near-dedup: Jaccard threshold ~ (1/num_buckets)^(1/hashes_per_bucket)."""

    enabled: bool = True
    n_grams: int = 5
    num_buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1


@dataclass
class CorpusConfig:
    """`megatron-qwen corpus`: raw records -> filtered, deduplicated indexed shards + a blend file."""

    input: list[str] = field(default_factory=list)  # folders (or files) of JSONL(.gz) records
    input_format: str = "files"  # "files": one source file per record; "repos": one repository per record
    text_key: str = "content"  # "files": the field holding the file text
    output: str = "corpus_out"  # run folder: shards/, blend.yaml, report.json, logs/
    mode: str = "file"  # formatting + tokenization mode of `megatron-qwen preprocess`: file, repo, text, math
    tokenizer: str = "${oc.env:QWEN_TOKENIZER_DIR,tokenizer}"
    tasks: int = 1  # shards; datatrove gives each task whole input files
    workers: int = 1  # tasks run at once (Local executor)
    seed: int = 1234  # FIM seed (per record: shards do not change tokens)
    fim_rate: float = 0.5
    fim_spm_rate: float = 0.0
    fim_line_level: bool = False
    max_tokens: int = 32768  # repo mode: document length limit
    decontaminate: list[str] = field(default_factory=list)  # as `preprocess --decontaminate`
    langid: CorpusLangIdConfig = field(default_factory=CorpusLangIdConfig)
    rules: CorpusRulesConfig = field(default_factory=CorpusRulesConfig)
    quality: list[CorpusQualityStage] = field(default_factory=list)
    exact_dedup: bool = True
    minhash: CorpusMinhashConfig = field(default_factory=CorpusMinhashConfig)
    blend_weight: float = 1.0
    report_examples: int = 3  # removed examples per filter and reason in the report
    slurm_time: str = "01:00:00"  # per datatrove stage job, with cluster=slurm


@dataclass
class Config:
    """The whole tree; Hydra composes `hydra/` YAML onto it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    post: PostTrainConfig = field(default_factory=PostTrainConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    seed: int = 1234


_FP8_RECIPES = (None, "delayed", "tensorwise", "mxfp8", "blockwise")
ATTENTION_BACKENDS = ("auto", "flash", "fused", "unfused")
CUDA_GRAPHS = ("none", "local")
_CP_COMM_TYPES = ("p2p", "all_gather", "a2a", "a2a+p2p")


def derive_data_parallel_size(parallel: ParallelConfig, world_size: int) -> int:
    """dp = world / (tp·pp·cp); errors when the world size does not divide."""
    p = parallel
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    if world_size % model_parallel != 0:
        raise ConfigError(
            f"world size ({world_size}) must be divisible by tensor_model_parallel_size "
            f"({p.tensor_model_parallel_size}) x pipeline_model_parallel_size ({p.pipeline_model_parallel_size}) "
            f"x context_parallel_size ({p.context_parallel_size}) = {model_parallel}; "
            "change the parallel sizes or the number of processes"
        )
    dp = world_size // model_parallel
    if p.data_parallel_size is not None and p.data_parallel_size != dp:
        raise ConfigError(
            f"world size ({world_size}) must equal tensor_model_parallel_size ({p.tensor_model_parallel_size}) "
            f"x pipeline_model_parallel_size ({p.pipeline_model_parallel_size}) x context_parallel_size "
            f"({p.context_parallel_size}) x data_parallel_size ({p.data_parallel_size}); "
            f"set data_parallel_size={dp} or leave it unset"
        )
    return dp


def validate_model_parallel(model: ModelConfig, parallel: ParallelConfig, seq_length: int) -> None:
    """Cross-field rules between the architecture, the layout and the sequence length."""
    p, m = parallel, model
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    vpp = p.virtual_pipeline_model_parallel_size
    for name, value in (
        ("tensor_model_parallel_size", tp),
        ("pipeline_model_parallel_size", pp),
        ("context_parallel_size", cp),
    ):
        if value < 1:
            raise ConfigError(f"parallel.{name} ({value}) must be >= 1")
    if m.num_attention_heads % tp:
        raise ConfigError(
            f"num_attention_heads ({m.num_attention_heads}) must be divisible by "
            f"tensor_model_parallel_size ({tp}); choose a tensor_model_parallel_size that divides it"
        )
    if m.num_query_groups % tp:
        raise ConfigError(
            f"num_query_groups ({m.num_query_groups}) must be divisible by tensor_model_parallel_size ({tp}); "
            f"use tensor_model_parallel_size <= {m.num_query_groups} that divides it"
        )
    if m.num_attention_heads % m.num_query_groups:
        raise ConfigError(
            f"num_attention_heads ({m.num_attention_heads}) must be divisible by num_query_groups "
            f"({m.num_query_groups})"
        )
    if m.vocab_size % tp:
        raise ConfigError(
            f"vocab_size ({m.vocab_size}) must be divisible by tensor_model_parallel_size ({tp}) "
            "so the embedding keeps its Hugging Face shape"
        )
    if vpp is not None:
        if vpp < 1:
            raise ConfigError(f"virtual_pipeline_model_parallel_size ({vpp}) must be >= 1 or null")
        if pp < 2 and vpp > 1:
            raise ConfigError(
                f"virtual_pipeline_model_parallel_size ({vpp}) needs pipeline_model_parallel_size > 1 "
                f"(got {pp}); unset virtual_pipeline_model_parallel_size"
            )
    stages = pp * (vpp or 1)
    if m.num_layers % stages:
        raise ConfigError(
            f"num_layers ({m.num_layers}) must be divisible by pipeline_model_parallel_size ({pp}) "
            f"x virtual_pipeline_model_parallel_size ({vpp or 1}) = {stages}"
        )
    if cp > 1 and seq_length % (2 * cp):
        raise ConfigError(
            f"seq_length ({seq_length}) must be divisible by 2 x context_parallel_size ({2 * cp}) "
            "for the load-balanced context-parallel split"
        )
    if p.sequence_parallel:
        if tp < 2:
            raise ConfigError(
                "sequence_parallel needs tensor_model_parallel_size > 1 "
                f"(got {tp}); set parallel.sequence_parallel=false"
            )
        if (seq_length // cp) % tp:
            raise ConfigError(
                f"seq_length ({seq_length}) / context_parallel_size ({cp}) must be divisible by "
                f"tensor_model_parallel_size ({tp}) with sequence_parallel"
            )
    if p.cp_comm_type not in _CP_COMM_TYPES:
        raise ConfigError(f"parallel.cp_comm_type ({p.cp_comm_type!r}) must be one of {_CP_COMM_TYPES}")
    if m.fp8_recipe not in _FP8_RECIPES:
        raise ConfigError(f"model.fp8_recipe ({m.fp8_recipe!r}) must be one of {_FP8_RECIPES}")
    if m.recompute_granularity not in (None, "selective", "full"):
        raise ConfigError(
            f"model.recompute_granularity ({m.recompute_granularity!r}) must be null, 'selective' or 'full'"
        )
    if m.recompute_granularity == "full" and m.recompute_method not in ("uniform", "block"):
        raise ConfigError(
            "model.recompute_granularity='full' needs model.recompute_method 'uniform' or 'block' "
            f"(got {m.recompute_method!r})"
        )
    if m.transformer_impl not in ("auto", "local", "transformer_engine"):
        raise ConfigError(
            f"model.transformer_impl ({m.transformer_impl!r}) must be 'auto', 'local' or 'transformer_engine'"
        )


def validate_lora(lora: LoRAConfig) -> None:
    """The adapter section's own rules (the trainer adds the ones that involve other sections)."""
    if not lora.enabled:
        return
    if lora.rank < 1:
        raise ConfigError(f"lora.rank ({lora.rank}) must be >= 1")
    if lora.alpha <= 0:
        raise ConfigError(f"lora.alpha ({lora.alpha}) must be > 0")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout ({lora.dropout}) must be in [0, 1)")
    unknown = [t for t in lora.target_modules if t not in LORA_TARGETS]
    if unknown or not lora.target_modules:
        raise ConfigError(f"lora.target_modules ({list(lora.target_modules)}) must be a non-empty subset of "
                          f"{list(LORA_TARGETS)} (megatron-core module names: q/k/v = linear_qkv, o = linear_proj, "
                          "gate/up = linear_fc1, down = linear_fc2)")


def register_configs() -> None:
    """Register the schema as `base_config` in Hydra's ConfigStore (hydra/config.yaml builds on it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


def from_dictconfig(cfg: Any) -> Config:
    """A composed (or saved, resolved) DictConfig as the typed tree; unknown keys or wrong types fail here,
    naming the key."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))


def model_config_to_dict(model: ModelConfig) -> dict:
    """A ModelConfig as plain JSON-able values (the record a checkpoint carries)."""
    return dataclasses.asdict(model)


def model_config_from_dict(d: dict) -> ModelConfig:
    """The inverse of model_config_to_dict."""
    d = dict(d)
    d["yarn"] = YarnConfig(**d.get("yarn", {}))
    return ModelConfig(**d)
