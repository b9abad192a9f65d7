"""The memory plan: what a config needs on each device, before any model loads.

``python -m pure_rl.train --config C --dry-run --device-memory GIB`` prints, per device, the GiB of the policy's
weights (its fp32 master weights under mixed precision, plus the autocast compute copy), gradients, AdamW state,
the KL reference, the PRM, the generation engine (vLLM's share of the device, or the transformers KV cache) and
the activations of one micro-batch (with and without gradient checkpointing), then ``memory plan: fits`` or
``memory plan: does not fit ...`` naming the levers. Beside the devices it plans what a run needs outside them:
the run folder's disk (three checkpoints at the peak of a save: the current one, the previous one kept, the one
being written), ``/dev/shm`` (the vLLM weight sync's file) and host RAM (the policy as loaded, before it moves to
its device). A run whose plan does not fit, on a CUDA device, or whose checkpoints or sync file cannot be written
anywhere, is refused the same way before any model loads.

Parameter counts come from the model's ``config.json`` (a local folder, the tiny model, or the table below for
the published models the shipped configs name; no hub is needed). Activations follow a per-token, per-layer
count fitted to the tensors autograd saves for Llama/Qwen2 layers with SDPA attention on this CPU
(``benchmarks/memory_plan.py`` checks the plan against measured tensors); prompts are estimated from the
template's length.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pure_rl.config import shared_prompt_pass

__all__ = ["Architecture", "MemoryPlan", "Storage", "architecture", "checkpoint_bytes", "memory_plan"]

GIB = 2**30
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Architecture:
    """What the memory of a Llama/Qwen2-style decoder depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_outputs: int = 0  # a token-classification PRM's head (instead of the LM head)
    qkv_bias: bool = False

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def lora_parameters(self, rank: int, target_modules) -> int:
        """Adapter parameters of rank ``rank`` on the named linear layers of every decoder layer."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                  "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip
        return self.layers * sum(rank * (a + b) for name, (a, b) in shapes.items() if name in target_modules)

    def parameters(self) -> int:
        h, kv = self.hidden, self.kv_dim
        attention = 2 * h * h + 2 * h * kv + (h + 2 * kv if self.qkv_bias else 0)
        layer = attention + 3 * h * self.intermediate + 2 * h
        head = self.head_outputs * h if self.head_outputs else (0 if self.tied else self.vocab * h)
        return self.vocab * h + self.layers * layer + h + head


_QWEN25_MATH_7B = dict(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064, qkv_bias=True)
# Published configs of the models the shipped configs name (config.json of each on the hub).
KNOWN = {
    "Qwen/Qwen2.5-Math-7B": Architecture(**_QWEN25_MATH_7B, tied=False),
    "Qwen/Qwen2.5-Math-7B-Instruct": Architecture(**_QWEN25_MATH_7B, tied=False),
    "jinachris/PURE-PRM-7B": Architecture(**_QWEN25_MATH_7B, tied=False, head_outputs=2),
    "Qwen/Qwen2.5-Math-PRM-7B": Architecture(**_QWEN25_MATH_7B, tied=False, head_outputs=3584 + 2),
    "Qwen/Qwen2.5-Math-1.5B": Architecture(
        layers=28, hidden=1536, intermediate=8960, heads=12, kv_heads=2, vocab=151936, tied=True, qkv_bias=True
    ),
    "smollm2-135m-instruct": Architecture(
        layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, vocab=49152, tied=True
    ),
}


def architecture(name: str, token_classification: bool = False) -> Architecture:
    """The architecture of ``name``: the table above, else the ``config.json`` of its folder."""
    if name in KNOWN:
        return KNOWN[name]
    from transformers import AutoConfig

    from agents.models import resolve_model_dir

    try:
        c = AutoConfig.from_pretrained(resolve_model_dir(name))
    except OSError as e:
        raise ValueError(
            f"no architecture for {name!r}: the memory plan reads config.json of a local folder, or knows "
            f"{', '.join(KNOWN)}"
        ) from e
    return Architecture(
        layers=c.num_hidden_layers,
        hidden=c.hidden_size,
        intermediate=c.intermediate_size,
        heads=c.num_attention_heads,
        kv_heads=getattr(c, "num_key_value_heads", c.num_attention_heads),
        vocab=c.vocab_size,
        tied=bool(getattr(c, "tie_word_embeddings", False)),
        head_outputs=getattr(c, "num_labels", 2) if token_classification else 0,
        qkv_bias=c.model_type == "qwen2",
    )


def activation_bytes(
    arch: Architecture,
    tokens: int,
    logit_tokens: int,
    bytes_per: int,
    checkpointing: bool,
    shared_prompt: bool,
    chunk_tokens: int = 0,
) -> int:
    """Saved activations of the loss's forward pass with autograd: per token and layer about 1.75 H + 4 I + 4 kv
    elements (norms, projections' inputs, rotary q/k, the MLP's gate, up and their product), plus float32
    vocabulary-sized tensors (logits, log-softmax and the entropy's terms: 4 per predicted token, 7 with the
    shared prompt pass, which also concatenates and repeats them); with checkpointing, each layer's input only,
    one layer recomputed at a time, and 2 vocabulary-sized tensors. Counts fitted to SmolLM2-135M on this CPU.
    With the LM head in chunks (``train.logit_chunk_tokens``) the vocabulary-sized tensors span one chunk."""
    per_layer = 1.75 * arch.hidden + 4 * arch.intermediate + 4 * arch.kv_dim
    if chunk_tokens > 0:
        logit_tokens = min(logit_tokens, chunk_tokens)
    logits = logit_tokens * arch.vocab * 4
    if checkpointing:
        return int(arch.layers * tokens * arch.hidden * bytes_per + tokens * per_layer * bytes_per + 2 * logits)
    return int(arch.layers * tokens * per_layer * bytes_per + (7 if shared_prompt else 4) * logits)


@dataclass(frozen=True)
class Storage:
    """What a run needs of a place outside its devices, and what that place has (None: not measured here)."""

    name: str
    what: str
    needs: int
    has: int | None
    lever: str

    @property
    def fits(self) -> bool:
        return self.has is None or self.needs <= self.has


@dataclass
class MemoryPlan:
    """Bytes per component per device, the device budget, what the run needs outside its devices, and what
    would make it fit."""

    devices: dict[str, list[tuple[str, int]]]
    budget: int | None
    levers: list[str]
    notes: list[str]
    storage: list[Storage] = field(default_factory=list)

    def total(self, device: str) -> int:
        return sum(b for _, b in self.devices[device])

    @property
    def devices_fit(self) -> bool:
        return self.budget is None or all(self.total(d) <= self.budget for d in self.devices)

    @property
    def fits(self) -> bool:
        return self.devices_fit and all(s.fits for s in self.storage)

    def lines(self) -> list[str]:
        out = []
        for device, parts in self.devices.items():
            out.append(f"{device}:")
            out += [f"  {name:<70} {b / GIB:8.2f} GiB" for name, b in parts]
            out.append(f"  {'total':<70} {self.total(device) / GIB:8.2f} GiB")
        for s in self.storage:
            has = "not measured" if s.has is None else f"{s.has / GIB:.2f} GiB available"
            out.append(f"{s.name}: {s.what}: {s.needs / GIB:.2f} GiB ({has})")
        out += [f"note: {n}" for n in self.notes]
        problems = []
        if not self.devices_fit:
            worst = max(self.devices, key=self.total)
            problems.append(
                f"{worst} needs {self.total(worst) / GIB:.1f} GiB of {self.budget / GIB:.0f} GiB; levers: "
                + "; ".join(self.levers)
            )
        problems += [
            f"{s.name} needs {s.needs / GIB:.1f} GiB of {s.has / GIB:.1f} GiB here ({s.lever})"
            for s in self.storage
            if not s.fits
        ]
        if problems:
            out.append("memory plan: does not fit: " + " | ".join(problems))
        elif self.budget is None:
            out.append("memory plan: no device memory given (--device-memory GIB)")
        else:
            out.append(f"memory plan: fits ({self.budget / GIB:.0f} GiB per device)")
        return out


def _device(name: str) -> str:
    return "cpu" if name == "cpu" else name if ":" in name else f"{name}:0"


def checkpoint_bytes(cfg, arch: Architecture | None = None) -> int:
    """Bytes of one checkpoint: the trained weights (all, or a LoRA model's adapters) and AdamW's two moments, in
    the policy's dtype (the 1.5B check on an H200 wrote 17.3 GiB: 12 bytes per fp32 parameter)."""
    arch = arch or architecture(cfg.policy.model)
    lora = cfg.lora.rank > 0
    trained = arch.lora_parameters(cfg.lora.rank, cfg.lora.target_modules) if lora else arch.parameters()
    return 3 * trained * _BYTES[cfg.policy.dtype]


def _free_bytes(path: Path) -> int:
    """Free bytes on the file system that ``path`` is (or would be created) on."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _host_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def storage_plan(cfg, run_dir: str | Path, arch: Architecture, processes_per_host: int = 1) -> list[Storage]:
    """The run folder's disk, ``/dev/shm`` (vLLM) and host RAM the run needs, against what this machine has
    (``processes_per_host``: ranks on this machine, each loading the policy on the host before sharding it)."""
    run_dir = Path(run_dir)
    one = checkpoint_bytes(cfg, arch)
    # Checkpoint files already in the folder are replaced as the run saves (a resume): they count as free.
    held = sum(f.stat().st_size for f in run_dir.glob("checkpoint*.pt*")) if run_dir.is_dir() else 0
    out = [
        Storage(
            f"run folder disk ({run_dir})",
            f"3 checkpoints of {one / GIB:.2f} GiB at the peak of a save (current, previous, being written)",
            3 * one,
            _free_bytes(run_dir) + held,
            "a log.run_dir on a larger disk, or lora.rank > 0 (checkpoints hold the adapters only)",
        )
    ]
    param_bytes = _BYTES[cfg.policy.dtype]
    # An engine in this process takes the weights streamed in place; one in another process reads a file.
    engine_elsewhere = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") == "1"
    if cfg.policy.backend == "vllm" and engine_elsewhere and Path("/dev/shm").is_dir():
        out.append(
            Storage(
                "/dev/shm",
                "the vLLM weight sync's safetensors file (every weight, in the policy's dtype)",
                arch.parameters() * param_bytes,
                shutil.disk_usage("/dev/shm").free,
                "a larger /dev/shm (docker run --shm-size), or policy.backend=transformers",
            )
        )
    loaders = f"{processes_per_host} processes, each" if processes_per_host > 1 else "the policy"
    out.append(
        Storage(
            "host RAM",
            f"{loaders} loaded on the host before it moves to its device",
            processes_per_host * arch.parameters() * param_bytes,
            _host_bytes(),
            "a machine with more memory",
        )
    )
    return out


def memory_plan(
    cfg, device_memory_gib: float | None = None, run_dir: str | Path | None = None, world_size: int = 1
) -> MemoryPlan:
    """The plan of ``cfg`` for devices of ``device_memory_gib`` GiB each (None: report only) and for its run folder
    ``run_dir`` (default: ``log.run_dir``), per device of a run on ``world_size`` processes (one per device): with
    FSDP (``train.parallel=fsdp``, or any ``world_size > 1`` when the config says none) the weights, gradients,
    AdamW state and KL reference are sharded ``world_size`` ways, plus the all-gathered layers FSDP holds; each
    rank rolls out its share of the batch, and generates from a full copy of the policy (the transformers
    backend) or its vLLM engine."""
    pc, tc = cfg.policy, cfg.train
    arch = architecture(pc.model)
    n = arch.parameters()
    world = max(1, world_size)
    ranks = world if world > 1 and tc.parallel != "ddp" else 1  # how many ways the training state is split
    per_rank = f", 1/{ranks} per rank" if ranks > 1 else ""
    mixed = tc.precision != "fp32"
    param_bytes = _BYTES[pc.dtype]
    compute_bytes = 2 if mixed else param_bytes
    device = _device(pc.device)
    parts: dict[str, list[tuple[str, int]]] = {device: []}
    add = lambda dev, name, b: parts.setdefault(dev, []).append((name, int(b)))  # noqa: E731

    weights = "policy weights (fp32 masters)" if mixed else f"policy weights ({pc.dtype})"
    add(device, f"{weights}, {n / 1e9:.2f}B parameters{per_rank}", n * param_bytes / ranks)
    if ranks > 1:
        # FSDP2 all-gathers a layer's full parameters for its forward and backward (the next one prefetched), and
        # the root module (embeddings, head, final norm) stays unsharded from the forward to the backward.
        embed = arch.vocab * arch.hidden * (1 if arch.tied else 2)
        layer = (n - embed - arch.hidden) / arch.layers
        gathered = f"FSDP all-gathered ({'16-bit' if mixed else pc.dtype}): 2 decoder layers, the embeddings and head"
        add(device, gathered, (2 * layer + embed) * compute_bytes)
    if mixed and ranks == 1:  # FSDP gathers 16-bit parameters instead (MixedPrecisionPolicy)
        add(device, "autocast compute copy of the weights (16-bit)", n * 2)
    lora = cfg.lora.rank > 0
    trained = arch.lora_parameters(cfg.lora.rank, cfg.lora.target_modules) if lora else n
    if lora:
        add(device, f"LoRA adapters, rank {cfg.lora.rank}: {trained / 1e6:.1f}M parameters", trained * param_bytes)
    add(device, "gradients" + (" (adapters)" if lora else "") + per_rank, trained * param_bytes / ranks)
    add(
        device,
        "AdamW state (2 moments)" + (" (adapters)" if lora else "") + per_rank,
        2 * trained * param_bytes / ranks,
    )
    if cfg.algo.kl_coef > 0 and not lora:  # with LoRA the reference is the base model, adapters off
        add(device, "KL reference policy" + per_rank, n * compute_bytes / ranks)
    if cfg.env.reward_mode != "vr" and cfg.env.prm == "hf":
        prm = architecture(cfg.env.prm_model, token_classification=True)
        add(_device(cfg.env.prm_device), f"PRM ({prm.parameters() / 1e9:.2f}B, {cfg.env.prm_dtype})",
            prm.parameters() * _BYTES[cfg.env.prm_dtype])  # fmt: skip

    prompt_tokens = len(cfg.env.prompt_template) // 4 + 64
    seq = prompt_tokens + cfg.env.max_tokens
    rows = tc.prompts_per_iter * tc.samples_per_prompt // world  # each rank rolls out its share
    on_gpu = device != "cpu"
    if pc.backend == "vllm":
        from agents.policy import engine_dtype

        engine = engine_dtype(pc)
        engine_bytes = _BYTES[engine]
        if on_gpu and device_memory_gib is not None:
            add(device, f"vLLM engine (gpu_memory_utilization {pc.gpu_memory_utilization} of the device)",
                pc.gpu_memory_utilization * device_memory_gib * GIB)  # fmt: skip
        elif not on_gpu:
            add(device, f"vLLM engine ({engine} weights + KV cache)", n * engine_bytes + pc.vllm_kv_cache_gib * GIB)
        # The sync streams one tensor at a time, cast (or a LoRA layer merged) as it goes: the largest is the
        # embedding (vocabulary x hidden), or an adapted MLP projection.
        largest = max(arch.vocab * arch.hidden, arch.hidden * arch.intermediate)
        add(device, f"weight sync: one tensor at a time ({engine}, the largest)", largest * engine_bytes)
    else:
        if world > 1:  # a sharded module's forward is a collective: ranks generate from a full copy
            from agents.policy import engine_dtype

            add(device, f"generation copy of the policy ({engine_dtype(pc)})", n * _BYTES[engine_dtype(pc)])
        add(device, f"generation KV cache ({rows} sequences x {seq} tokens)",
            rows * seq * arch.layers * 2 * arch.kv_dim * param_bytes)  # fmt: skip
    tokens = tc.micro_batch_size * seq
    shared = shared_prompt_pass(cfg)
    logit_tokens = tc.micro_batch_size * (cfg.env.max_tokens if shared else seq)
    chunk = tc.logit_chunk_tokens
    plain = activation_bytes(
        arch, tokens, logit_tokens, compute_bytes, checkpointing=False, shared_prompt=shared, chunk_tokens=chunk
    )
    # Checkpointing runs whole sequences (it cannot keep the shared prompt's cache): all tokens get logits.
    ckpt = activation_bytes(
        arch, tokens, tc.micro_batch_size * seq, compute_bytes, checkpointing=True, shared_prompt=False,
        chunk_tokens=chunk,
    )  # fmt: skip
    chosen, other = (ckpt, plain) if tc.gradient_checkpointing else (plain, ckpt)
    label = "with" if tc.gradient_checkpointing else "without"
    add(device, f"activations, micro-batch of {tc.micro_batch_size} x {seq} tokens, {label} checkpointing", chosen)

    budget = None if device_memory_gib is None else int(device_memory_gib * GIB)
    levers = []
    if not tc.gradient_checkpointing and plain > ckpt:
        levers.append(
            f"train.gradient_checkpointing=true train.shared_prompt_pass=false (activations {plain / GIB:.1f} -> "
            f"{other / GIB:.1f} GiB)"
        )
    if tc.micro_batch_size > 1:
        levers.append(f"a smaller train.micro_batch_size ({chosen / tc.micro_batch_size / GIB:.2f} GiB per sequence)")
    if pc.backend == "vllm" and on_gpu:
        levers.append("a smaller policy.gpu_memory_utilization (vLLM's share), or the PRM on another device")
    if not lora:
        saved = n * param_bytes * 3 + (n * compute_bytes if cfg.algo.kl_coef > 0 else 0)
        levers.append(f"lora.rank=16 (gradients and AdamW state of the adapters only, no reference copy: saves about "
                      f"{saved / GIB:.1f} GiB)")  # fmt: skip
    if budget and not lora:
        fits_on = next(
            (w for w in (2, 4, 8, 16, 32, 64) if w > world and _sharded_total(cfg, w, device_memory_gib) <= budget),
            None,
        )
        if fits_on:
            levers.append(
                f"{fits_on} GPUs with FSDP: torchrun --nproc_per_node {fits_on} -m pure_rl.train ... "
                f"train.parallel=fsdp (plan it with --world-size {fits_on})"
            )
    notes = [f"prompt length estimated at {prompt_tokens} tokens from env.prompt_template"]
    if world > 1:
        notes.append(
            f"{world} processes, one per device ({tc.parallel if tc.parallel != 'none' else 'fsdp'}); each loads the "
            "policy on the host before sharding it"
        )
    run_dir = run_dir if run_dir is not None else cfg.log.run_dir.format(name=cfg.log.name)
    return MemoryPlan(parts, budget, levers, notes, storage_plan(cfg, run_dir, arch, min(world, 8)))


def _sharded_total(cfg, world: int, device_memory_gib: float) -> int:
    """Bytes on the fullest device of ``cfg`` under FSDP over ``world`` devices of ``device_memory_gib``."""
    plan = memory_plan(cfg, device_memory_gib, "/", world_size=world)
    return max(plan.total(d) for d in plan.devices)
