"""WikiText perplexity: the study's protocol (default) and lm-evaluation-harness's.

study   (QWEN eval_tasks.eval_wikitext_ppl; HF "perplexity of fixed-length models"): wikitext-103-v1
        test, first 1000 non-empty lines (stripped) joined by "\\n\\n"; windows of max_length tokens
        (1024, or the model's context if shorter) every `stride` tokens (512); each token after the
        first is scored exactly once, by the window that ends nearest after it; TOKEN perplexity.
harness (lm_eval/tasks/wikitext): EleutherAI/wikitext_document_level wikitext-2-raw-v1 test, one
        detokenized page per request, `loglikelihood_rolling` over DISJOINT windows
        (get_rolling_token_windows with context_len 1 + make_disjoint_window); WORD perplexity
        exp(-Σ loglik / Σ words), words = len(re.split(r"\\s+", page)) of the ORIGINAL page.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

from ..data import load_wikitext, load_wikitext_documents
from .base import PROBES, ProbeResult, eval_mode, pad_id, resolve_limit
from .scoring import continuation_logprobs, max_positions


TOP_HEADING = re.compile(r"^= [^=].* =$")   # an article's title line, stripped: "= Robert Boulter ="


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The study's windows as (begin, end, n_scored): tokens[begin:end] is fed, its last n_scored scored.

    Token 0 has no context and is never scored; every other token is scored exactly once."""
    if not 1 <= stride < max_length:
        raise ValueError(f"need 1 <= stride < max_length, got stride {stride}, max_length {max_length}")
    plan, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        plan.append((begin, end, end - max(prev_end, 1)))
        prev_end = end
        if end == n_tokens:
            break
    return plan


def rolling_windows(tokens: Sequence[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-evaluation-harness's disjoint rolling windows as (context, continuation) pairs.

    Same windows as `make_disjoint_window(get_rolling_token_windows(tokens, prefix, max_length, 1))`:
    the first window predicts tokens[:L] after the prefix token; each later one predicts the next
    L tokens (fewer at the end) with the preceding tokens as context, L+1 tokens in all."""
    tokens, L = list(tokens), max_length
    if not tokens:
        return []
    first = min(L, len(tokens))
    out = [([prefix], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, L)
        end = done + n
        out.append((tokens[end - L - 1:end - n], tokens[end - n:end]))
        done = end
    return out


# lm-evaluation-harness's wikitext_detokenizer, as an ordered list of (kind, pattern, replacement).
_DETOKENIZE = (
    ("str", "s '", "s'"),
    ("re", r"/' [0-9]/", r"/'[0-9]/"),  # sic: in the harness this matches a literal "/' 5/", i.e. nearly never
    ("str", " @-@ ", "-"), ("str", " @,@ ", ","), ("str", " @.@ ", "."),
    ("str", " : ", ": "), ("str", " ; ", "; "), ("str", " . ", ". "), ("str", " ! ", "! "),
    ("str", " ? ", "? "), ("str", " , ", ", "),
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"), ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"), ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("str", "= = = =", "===="), ("str", "= = =", "==="), ("str", "= =", "=="),
    ("str", " \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"), ("str", " \n", "\n"), ("str", "\n ", "\n"),
    ("str", " N ", " 1 "), ("str", " 's", "'s"),
)


def wikitext_detokenize(page: str) -> str:
    """Undo WikiText's tokenization (" @-@ ", " , ", "( x )", …) as lm-evaluation-harness does."""
    for kind, pat, rep in _DETOKENIZE:
        page = re.sub(pat, rep, page) if kind == "re" else page.replace(pat, rep)
    return page


def count_words(page: str) -> int:
    """The harness's word count: pieces of re.split(r"\\s+", page) (edge whitespace adds empty pieces)."""
    return len(re.split(r"\s+", page))


def _window(model, max_length: int, stride: int | None) -> tuple[int, int | None]:
    """max_length capped by the model's context; a capped window keeps the stride/max_length ratio."""
    L = min(max_length, max_positions(model) or max_length)
    if stride is None:
        return L, None
    return L, stride if L == max_length else max(1, stride * L // max_length)


@PROBES.register("wikitext:study")
@dataclass(frozen=True)
class WikiTextStudy:
    task: ClassVar[str] = "wikitext"
    variant: ClassVar[str] = "study"
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "ppl"
    higher_is_better: ClassVar[bool] = False
    hub_id: ClassVar[str] = "Salesforce/wikitext"
    default_limit: ClassVar[int | None] = 1000   # non-empty lines
    split: str = "test"
    config: str = "wikitext-103-v1"
    max_length: int = 1024   # window, capped at the model's max_position_embeddings
    stride: int = 512        # half-window overlap: each token sees ≥ 512 tokens of context

    def load(self, source: str = "hub", limit: int | None = None) -> list[str]:
        lines = [t.strip() for t in load_wikitext(source, self.split, config=self.config)["text"] if t and t.strip()]
        lim = resolve_limit(limit, self.default_limit)
        return lines if lim is None else lines[:lim]

    def units(self, lines: Sequence[str]) -> list[list[str]]:
        """The lines by article, each from a top-level heading ("= Title =", not "= = Section = =") to
        the next: the probe scores them as one text, so a sample draws whole articles (sample_units)."""
        out: list[list[str]] = []
        for line in lines:
            if not out or TOP_HEADING.match(line):
                out.append([])
            out[-1].append(line)
        return out

    def run(self, model, tokenizer, data: Sequence[str], *, batch_size: int = 8,
            progress: bool = False) -> ProbeResult:
        t0 = time.perf_counter()
        ids = tokenizer("\n\n".join(data), add_special_tokens=False, verbose=False)["input_ids"]  # long: no warning
        if len(ids) < 2:
            raise ValueError(f"WikiText: {len(data)} lines give {len(ids)} token(s); need at least 2")
        L, S = _window(model, self.max_length, self.stride)
        plan = sliding_windows(len(ids), L, S)
        pairs = [(ids[b:e - k], ids[e - k:e]) for b, e, k in plan]
        with eval_mode(model):
            lps = continuation_logprobs(model, pairs, pad_id=pad_id(tokenizer), batch_size=batch_size,
                                        progress=progress, desc="WikiText (study)")
        n_scored = sum(len(lp) for lp in lps)
        nll = -sum(float(lp.sum()) for lp in lps) / n_scored
        return ProbeResult(self.task, self.variant, self.metric, math.exp(nll), self.higher_is_better, len(data),
                           f"{self.version}+L{L}S{S}",
                           extras={"nll": nll, "tokens": n_scored, "windows": len(plan), "max_length": L,
                                   "stride": S},
                           seconds=time.perf_counter() - t0)


@PROBES.register("wikitext:harness")
@dataclass(frozen=True)
class WikiTextHarness:
    task: ClassVar[str] = "wikitext"
    variant: ClassVar[str] = "harness"
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "word_perplexity"
    higher_is_better: ClassVar[bool] = False
    hub_id: ClassVar[str] = "EleutherAI/wikitext_document_level"
    default_limit: ClassVar[int | None] = None   # all 62 test documents
    split: str = "test"
    config: str = "wikitext-2-raw-v1"
    max_length: int = 2048   # HFLM's default when set; capped at the model's max_position_embeddings

    def load(self, source: str = "hub", limit: int | None = None) -> list[str]:
        pages = list(load_wikitext_documents(source, self.split, config=self.config)["page"])
        lim = resolve_limit(limit, self.default_limit)
        return pages if lim is None else pages[:lim]

    def run(self, model, tokenizer, data: Sequence[str], *, batch_size: int = 8,
            progress: bool = False) -> ProbeResult:
        t0 = time.perf_counter()
        L, _ = _window(model, self.max_length, None)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        pairs, owner = [], []
        for d, page in enumerate(data):
            windows = rolling_windows(tokenizer(wikitext_detokenize(page), verbose=False)["input_ids"], prefix, L)
            pairs += windows
            owner += [d] * len(windows)
        with eval_mode(model):
            lps = continuation_logprobs(model, pairs, pad_id=pad_id(tokenizer), batch_size=batch_size,
                                        max_length=L, progress=progress, desc="WikiText (harness)")
        doc_ll = [0.0] * len(data)
        for d, lp in zip(owner, lps):
            doc_ll[d] += float(lp.sum())
        ll, words = sum(doc_ll), sum(count_words(p) for p in data)
        n_bytes, n_tokens = sum(len(p.encode("utf-8")) for p in data), sum(len(lp) for lp in lps)
        return ProbeResult(self.task, self.variant, self.metric, math.exp(-ll / words), self.higher_is_better,
                           len(data), f"{self.version}+L{L}",
                           extras={"byte_perplexity": math.exp(-ll / n_bytes),
                                   "bits_per_byte": -ll / n_bytes / math.log(2),
                                   "token_perplexity": math.exp(-ll / n_tokens) if n_tokens else float("nan"),
                                   "loglikelihood": ll, "words": words, "bytes": n_bytes, "tokens": n_tokens,
                                   "windows": len(pairs), "max_length": L},
                           items=[{"loglikelihood": x, "words": count_words(p)} for x, p in zip(doc_ll, data)],
                           seconds=time.perf_counter() - t0)
