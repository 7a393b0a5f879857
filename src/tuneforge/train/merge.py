"""`tuneforge merge RUN --out DIR`: fold an adapter into its base model and prove it.

The merged model is saved as a plain transformers folder (weights, tokenizer with
chat template, generation config). It then checks itself: the next-token
distributions of adapter-on-base and merged model are compared at every position of
a sample of the run's validation texts, and the largest KL divergence is reported.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tuneforge import outdir
from tuneforge.errors import Problem, TuneforgeError
from tuneforge.models.template import render
from tuneforge.models.tuned import artifact_dir, base_of

MERGEABLE = {"lora", "dora", "qlora", "ia3"}
KL_TOLERANCE = 1e-3


def _sample_texts(run: Path, tokenizer, limit: int) -> list[str]:
    texts = []
    config = run / "config.yaml"
    if config.exists():
        import yaml

        data = yaml.safe_load(config.read_text()).get("data")
        val = Path(data) / "val.jsonl" if data else None
        if val and val.exists():
            for line in val.read_text(encoding="utf-8").splitlines()[:limit]:
                rec = json.loads(line)
                if "messages" in rec:
                    texts.append(render(tokenizer, rec["messages"]))
                elif "text" in rec:
                    texts.append(rec["text"])
    return texts or ["The customer wrote: my card was charged twice and I need a refund.",
                     "Question: what is the capital of France?\nAnswer:"]


def max_kl(a, b, tokenizer, texts: list[str]) -> float:
    import torch
    import torch.nn.functional as F

    worst = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, truncation=True, max_length=512)
            pa = F.log_softmax(a(**ids).logits.float(), -1)
            pb = F.log_softmax(b(**ids).logits.float(), -1)
            kl = (pa.exp() * (pa - pb)).sum(-1)
            worst = max(worst, float(kl.max()))
    return worst


def merge(run: Path, out: Path, samples: int = 16) -> dict[str, Any]:
    from transformers import GenerationConfig

    from tuneforge.models.tuned import load_tuned

    problems = outdir.check_out(out)
    if out.is_dir() and not (out / "merge.json").exists() and any(out.iterdir()):
        # the folder is replaced whole, so only a folder an earlier merge wrote may be
        problems.append(Problem("out_not_empty", "this folder holds files that merge did not write; merge replaces "
                                "its --out whole, so choose a new or empty folder", str(out)))
    if problems:
        raise TuneforgeError(problems)
    folder = artifact_dir(Path(run))
    if not (folder / "adapter_config.json").exists():
        raise TuneforgeError(Problem("nothing_to_merge", "this is already a standalone model (full fine-tuning); "
                                     "use it as it is", str(folder)))
    method = json.loads((folder / "tuneforge.json").read_text()).get("method") if (
        folder / "tuneforge.json").exists() else "lora"
    if method not in MERGEABLE:
        raise TuneforgeError(Problem("cannot_merge", f"{method} adapters add virtual tokens and cannot be folded "
                                     "into the weights; serve them as adapters instead", str(folder)))
    adapted, tokenizer = load_tuned(folder)
    reference, _ = load_tuned(folder)  # merging is in place, so keep an unmerged copy to compare
    merged = adapted.merge_and_unload()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        GenerationConfig.from_pretrained(str(folder)).save_pretrained(tmp)
    except OSError:
        GenerationConfig.from_pretrained(base_of(folder)).save_pretrained(tmp)
    texts = _sample_texts(Path(run), tokenizer, samples)
    kl = max_kl(reference, merged, tokenizer, texts)
    report = {"merged": str(out), "base_model": base_of(folder), "method": method, "checked_texts": len(texts),
              "max_kl": kl, "ok": kl < KL_TOLERANCE}
    (tmp / "merge.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return report
