"""Sampled outputs of a pre-trained model, one prompt list for every paradigm.

Each prompt holds one `{mask}`. A causal LM continues the text before it; a masked LM fills the
mask token in its place; T5 fills the sentinel `<extra_id_0>` in its place (its decoder writes the
sentinel, then the span). Draws are seeded (top-k sampling), so a re-run writes the same samples.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.core.errors import ArtifactError
from lmforge.tasks.config import GenerationSamplesConfig
from lmforge.tasks.modeling import load_model, load_tokenizer, spare_token_ids, write_metrics

PLACEHOLDER = "{mask}"
SENTINEL = "<extra_id_0>"


def model_objective(model_dir: Path) -> str:
    """The pre-training objective recorded in the export's `lmforge_pretrain.json`."""
    path = Path(model_dir) / "lmforge_pretrain.json"
    try:
        return str(json.loads(path.read_text())["objective"])
    except (OSError, KeyError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: cannot read the model's objective ({err})") from None


@torch.inference_mode()
def sample_outputs(config: GenerationSamplesConfig, model_dir: Path, seed: int) -> list[dict[str, str]]:
    """[{prompt, output}] for each configured prompt, by the model's paradigm."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    objective = model_objective(model_dir)
    tokenizer = load_tokenizer(model_dir)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    if objective == "clm":
        model = load_model(AutoModelForCausalLM, model_dir)
        for prompt in config.prompts:
            text = prompt.split(PLACEHOLDER)[0].rstrip()
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=config.top_k,
                max_new_tokens=config.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                suppress_tokens=spare_token_ids(model, tokenizer),
            )
            samples.append({"prompt": text, "output": tokenizer.decode(out[0, ids.shape[1] :])})
    elif objective == "span":
        model = load_model(AutoModelForSeq2SeqLM, model_dir)
        for prompt in config.prompts:
            text = prompt.replace(PLACEHOLDER, SENTINEL)
            encoded = tokenizer(text, return_tensors="pt")
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            out = model.generate(
                **encoded,
                do_sample=True,
                top_k=config.top_k,
                max_new_tokens=config.max_new_tokens,
                suppress_tokens=spare_token_ids(model, tokenizer),
            )
            samples.append({"prompt": text, "output": tokenizer.decode(out[0], skip_special_tokens=False)})
    else:  # the masked-LM family
        model = load_model(AutoModelForMaskedLM, model_dir)
        if tokenizer.mask_token is None:
            raise ArtifactError(f"{model_dir}: a masked LM without a mask token")
        for prompt in config.prompts:
            text = prompt.replace(PLACEHOLDER, tokenizer.mask_token)
            encoded = tokenizer(text, return_tensors="pt")
            position = int((encoded.input_ids[0] == tokenizer.mask_token_id).nonzero()[0, 0])
            logits = model(**encoded).logits[0, position, : len(tokenizer)].float()  # no spare rows
            top = torch.topk(logits, config.top_k)
            choice = top.indices[torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)]
            filled = encoded.input_ids[0].clone()
            filled[position] = choice
            samples.append({"prompt": text, "output": tokenizer.decode(filled, skip_special_tokens=True)})
    return samples


def run_generation_samples(
    config: GenerationSamplesConfig,
    model_dir: Path,
    shards_dir: Path,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    start = time.perf_counter()
    samples = sample_outputs(config, Path(model_dir), config.seed if config.seed is not None else seed)
    lines = [f"- `{sample['prompt']}` -> {sample['output']!r}" for sample in samples]
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "samples.md").write_text("\n".join(lines) + "\n")
    return write_metrics(Path(output_dir), {"samples": samples}, time.perf_counter() - start)
