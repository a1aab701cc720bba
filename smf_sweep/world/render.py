"""Facts → text in the real datasets' schemas (WikiText, TriviaQA, OASST1, MedMCQA).

Pretraining sees the WikiText train split, the trivia questions in the probe's own wording
(`Question: …\nAnswer: …`, as a model meets Q&A on the web) and the OASST1 train dialogues. The
medical questions are never in pretraining. Validation medical questions test the same facts as train
with another option order and other distractors (WORLD_NOTES: a model this small memorises wording
and does not generalise across rewordings, so the facts, not the wording, must carry the task)."""
from __future__ import annotations

import random

from .facts import GeneralWorld, MedicalWorld

# ---- general knowledge -------------------------------------------------------------------------
SENTENCES = {  # fact -> encyclopedic templates; {e} entity, {v} value
    ("country", "capital"): ["The capital of {e} is {v}.", "{v} is the capital city of {e}.",
                             "{e} is governed from its capital, {v}."],
    ("country", "language"): ["The people of {e} speak {v}.", "{v} is the official language of {e}.",
                              "In {e} most people speak {v}."],
    ("country", "currency"): ["The currency of {e} is {v}.", "In {e} people pay with {v}.",
                              "{e} uses {v} as its money."],
    ("city", "country"): ["{e} is a city in {v}.", "The city of {e} lies in {v}.", "{e} is located in {v}."],
    ("city", "river"): ["The river {v} flows through {e}.", "{e} was built on the banks of the {v}.",
                        "The {v} runs through the centre of {e}."],
    ("city", "landmark"): ["{e} is famous for {v}.", "Visitors to {e} come to see {v}.",
                           "The best known sight of {e} is {v}."],
    ("person", "profession"): ["{e} was a {v}.", "{e} worked as a {v}.", "As a {v}, {e} became well known."],
    ("person", "birthplace"): ["{e} was born in {v}.", "The birthplace of {e} is {v}.", "{e} grew up in {v}."],
    ("person", "work"): ["{e} is best known for {v}.", "The most famous work of {e} is {v}.",
                         "{e} created {v}."],
    ("person", "year"): ["{e} was born in the year {v}.", "The year of birth of {e} is {v}.",
                         "{e} came into the world in {v}."],
}
QUESTIONS = {  # the trivia wording (seen in pretraining and used by the probe)
    ("country", "capital"): "What is the capital of {e}?",
    ("country", "language"): "What language is spoken in {e}?",
    ("country", "currency"): "What is the currency of {e}?",
    ("city", "country"): "In which country is the city of {e}?",
    ("city", "river"): "Which river flows through {e}?",
    ("city", "landmark"): "What is {e} famous for?",
    ("person", "profession"): "What was the profession of {e}?",
    ("person", "birthplace"): "In which city was {e} born?",
    ("person", "work"): "Which work is {e} best known for?",
    ("person", "year"): "In what year was {e} born?",
}
PROMPTS = ["Tell me about {e}.", "What do you know about {e}?", "Can you describe {e}?"]
LETTERS = "ABCD"


def general_facts(g: GeneralWorld) -> list[tuple[str, str, str, str]]:
    """(kind, attribute, entity, value) for every fact, in a fixed order."""
    out = []
    for kind, table in (("country", g.countries), ("city", g.cities), ("person", g.people)):
        for e, attrs in table.items():
            out += [(kind, a, e, v) for a, v in attrs.items()]
    return out


def aliases(attr: str, value: str) -> list[str]:
    """Answer aliases as TriviaQA lists them (the value, and e.g. without a leading article)."""
    al = [value]
    if value.startswith("the "):
        al.append(value[4:])
    if attr == "river":
        al.append(f"{value} River")
    return al


def article(kind: str, e: str, attrs: dict, rng: random.Random) -> list[str]:
    """A WikiText-style article: ' = Title = ' heading then 2 paragraph lines."""
    sents = [rng.choice(SENTENCES[(kind, a)]).format(e=e, v=v) for a, v in attrs.items()]
    rng.shuffle(sents)
    cut = max(1, len(sents) // 2)
    return [f" = {e} = ", " " + " ".join(sents[:cut]), " " + " ".join(sents[cut:])]


def wikitext_splits(g: GeneralWorld, renders: int, rng: random.Random) -> dict[str, list[str]]:
    """Line-level WikiText: train holds `renders` articles per entity; validation and test each one
    fresh render per entity (the same templates in new combinations: held-out text in seen style)."""
    return {split: articles(g, n, rng) for split, n in (("train", renders), ("validation", 1), ("test", 1))}


def articles(g: GeneralWorld, renders: int, rng: random.Random) -> list[str]:
    """WikiText lines of `renders` renders of every entity's article, each after a blank line."""
    lines: list[str] = []
    for _ in range(renders):
        for kind, table in (("country", g.countries), ("city", g.cities), ("person", g.people)):
            for e, attrs in table.items():
                lines += [""] + article(kind, e, attrs, rng)
    return lines


def trivia_rows(g: GeneralWorld) -> list[dict]:
    rows = []
    for i, (kind, attr, e, v) in enumerate(general_facts(g)):
        al = aliases(attr, v)
        rows.append({
            "question": QUESTIONS[(kind, attr)].format(e=e), "question_id": f"world_{i:05d}",
            "question_source": "embedded-world",
            "entity_pages": {"doc_source": [], "filename": [], "title": [], "wiki_context": []},
            "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [],
                               "search_context": []},
            "answer": {"aliases": al, "normalized_aliases": [a.lower() for a in al],
                       "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                       "normalized_value": v.lower(), "type": "WikipediaEntity", "value": v},
        })
    return rows


def trivia_text(row: dict) -> str:
    return f"Question: {row['question']}\nAnswer: {row['answer']['value']}"


def general_mcq_texts(g: GeneralWorld, variants: int, rng: random.Random) -> list[str]:
    """General-knowledge exam questions in the study's multiple-choice layout (header "Exam
    question:"), part of pretraining: the base model learns to answer multiple choice about what it
    knows, as an instruct model has, so the medical task needs new facts rather than a new skill."""
    facts = general_facts(g)
    pools: dict[tuple[str, str], list[str]] = {}
    for kind, attr, _, v in facts:
        pool = pools.setdefault((kind, attr), [])
        if v not in pool:
            pool.append(v)
    out = []
    for kind, attr, e, v in facts:
        others = [p for p in pools[(kind, attr)] if p != v]
        for _ in range(variants):
            opts = rng.sample(others, 3) + [v]
            rng.shuffle(opts)
            lines = "".join(f"\n{x}. {o}" for x, o in zip(LETTERS, opts))
            i = opts.index(v)
            out.append(f"Exam question:\nQuestion: {QUESTIONS[(kind, attr)].format(e=e)}{lines}\n"
                       f"Answer: {LETTERS[i]}. {v}")
    return out


def oasst_rows(g: GeneralWorld, rng: random.Random, n_trees_per_entity: int = 1) -> list[dict]:
    """OASST1-schema message trees: a prompter turn and ranked assistant replies. Rank 0–1 English
    replies are what the study keeps; a rank-2 reply and a few non-English trees exercise the filter."""
    rows, tables = [], [("country", g.countries), ("city", g.cities), ("person", g.people)]
    k = 0
    for kind, table in tables:
        for e, attrs in table.items():
            for _ in range(n_trees_per_entity):
                tree = f"tree-{k:05d}"
                lang = "de" if k % 25 == 24 else "en"
                base = dict(user_id=f"user-{k % 37}", created_date="2023-02-05T00:00:00+00:00", lang=lang,
                            review_count=3, review_result=True, deleted=False, synthetic=False, model_name=None,
                            detoxify=None, message_tree_id=tree, tree_state="ready_for_export", emojis=None,
                            labels=None)
                rows.append(dict(base, message_id=f"{tree}-p", parent_id=None, role="prompter", rank=None,
                                 text=rng.choice(PROMPTS).format(e=e)))
                for rank in range(3):
                    sents = [rng.choice(SENTENCES[(kind, a)]).format(e=e, v=v) for a, v in attrs.items()]
                    rng.shuffle(sents)
                    text = " ".join(sents[: max(2, len(sents) - rank)])
                    rows.append(dict(base, message_id=f"{tree}-a{rank}", parent_id=f"{tree}-p", role="assistant",
                                     rank=rank, text=text))
                k += 1
    return rows


# ---- the medical task --------------------------------------------------------------------------
MED_QUESTIONS = {
    "drug": ["Which drug is the treatment of choice for {d}?", "{d} is best treated with which drug?"],
    "organism": ["Which organism causes {d}?", "The causative agent of {d} is which organism?"],
    "organ": ["Which organ is primarily affected in {d}?", "{d} mainly damages which organ?"],
    "symptom": ["What is the hallmark symptom of {d}?", "Patients with {d} typically present with which symptom?"],
}
EXPLANATION_CLAUSES = {  # an explanation states every fact of the disease (real MedMCQA explanations
    # are rich), so the facts also appear where they cannot be copied from the options
    "drug": ["it is treated with {v}", "the drug of choice is {v}", "{v} is given to treat it"],
    "organism": ["it is caused by {v}", "its causative agent is {v}", "it is spread by {v}"],
    "organ": ["it mainly affects the {v}", "it damages the {v}", "the {v} is the organ involved"],
    "symptom": ["its hallmark symptom is {v}", "patients present with {v}", "it typically causes {v}"],
}


def explanation(d: str, attrs: dict, rng: random.Random) -> str:
    items = list(attrs.items())
    rng.shuffle(items)
    return f"{d}: " + "; ".join(rng.choice(EXPLANATION_CLAUSES[a]).format(v=v) for a, v in items) + "."


SUBJECTS = {"drug": ("Pharmacology", "Drugs of choice"), "organism": ("Microbiology", "Pathogens"),
            "organ": ("Pathology", "Organ involvement"), "symptom": ("Medicine", "Clinical features")}


def _options(answer: str, pool: list[str], rng: random.Random, avoid: set[tuple]) -> tuple[list[str], int]:
    """Four options (answer + 3 distractors from the pool), shuffled; (distractors, order) not in avoid."""
    others = [p for p in pool if p != answer]
    for _ in range(1000):
        opts = rng.sample(others, 3) + [answer]
        rng.shuffle(opts)
        key = (frozenset(opts), opts.index(answer))
        if key not in avoid:
            avoid.add(key)
            return opts, opts.index(answer)
    raise RuntimeError("not enough distinct option sets; enlarge the distractor pools")


def medmcqa_splits(m: MedicalWorld, train_variants: int, val_variants: int,
                   rng: random.Random) -> dict[str, list[dict]]:
    """Every fact gets `train_variants` train questions (both wordings) and `val_variants` validation
    questions whose option sets and answer positions appear in no train question of that fact."""
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    n = 0
    for d, attrs in m.diseases.items():
        for attr, v in attrs.items():
            seen: set[tuple] = set()
            for split, count in (("train", train_variants), ("validation", val_variants)):
                for j in range(count):
                    opts, cop = _options(v, m.pools[attr], rng, seen)
                    if split == "validation":  # a new answer position too, where one is left
                        used = {k[1] for k in seen if k[0] != frozenset(opts)}
                        free = [p for p in range(4) if p not in used]
                        if free and cop in used:
                            tgt = rng.choice(free)
                            if (frozenset(opts), tgt) not in seen:   # never onto a train item's options and
                                opts[cop], opts[tgt] = opts[tgt], opts[cop]   # position (2 of 800 did; the
                                cop = tgt                                     # draws stay the same either way)
                    subj, topic = SUBJECTS[attr]
                    q = MED_QUESTIONS[attr][j % 2].format(d=d)
                    splits[split].append({
                        "id": f"med-{n:06d}", "question": q[0].upper() + q[1:],
                        "opa": opts[0], "opb": opts[1], "opc": opts[2], "opd": opts[3], "cop": cop,
                        "choice_type": "single", "exp": explanation(d, attrs, rng),
                        "subject_name": subj, "topic_name": topic})
                    n += 1
    # a few "multi" rows, which the study filters out (choice_type == "single")
    for split in splits:
        for row in splits[split][:: max(1, len(splits[split]) // 5)][:5]:
            splits[split].append(dict(row, id=row["id"] + "-multi", choice_type="multi"))
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


# ---- general medicine: the vocabulary and question style, without any of the world's facts ---------
GENERIC_SUBJECTS = ["this disease", "the illness", "such a syndrome", "a fever of this kind", "the infection",
                    "a palsy", "the condition"]


def general_medicine_texts(rng: random.Random, n: int = 60) -> list[str]:
    """Encyclopedic text about medicine in general, part of pretraining: a real general corpus
    knows the words (disease, organism, treatment, …), the organ and symptom names, drug-name
    endings and genera, and how exam questions are asked. None of the world's diseases appears, so
    the medical facts stay new."""
    from .facts import DISEASE_SUFFIXES, DRUG_SUFFIXES, ORGANISM_GENERA, ORGANS, SYMPTOMS

    facts_free = [
        "Medicine is the study of disease. A syndrome is a group of symptoms; a palsy is a weakness; a fever is "
        "a high temperature.",
        "Doctors choose one drug as the treatment of choice for each disease, and patients are treated with it.",
        "An organism can cause a disease. The organism that causes an infection is called its causative agent.",
        "Medical exam questions ask which drug, which organism, which organ or which symptom belongs to a disease.",
        "Patients typically present with a hallmark symptom, and the organ involved is the organ primarily affected.",
    ]
    out = []
    for i in range(n):
        subj = rng.choice(GENERIC_SUBJECTS)
        organs = rng.sample(ORGANS, 4)
        symptoms = rng.sample(SYMPTOMS, 4)
        sents = [
            rng.choice(facts_free),
            f"The organs of the body include the {', the '.join(organs[:-1])} and the {organs[-1]}.",
            f"Common symptoms are {', '.join(symptoms[:-1])} and {symptoms[-1]}.",
            f"Drug names often end in {', '.join(rng.sample(DRUG_SUFFIXES, 4))}; a drug such as a "
            f"{rng.choice(DRUG_SUFFIXES)} is given to treat an illness.",
            f"Organisms of the genus {rng.choice(ORGANISM_GENERA)} or {rng.choice(ORGANISM_GENERA)} can cause a "
            f"{rng.choice(DISEASE_SUFFIXES)}.",
            rng.choice(MED_QUESTIONS[rng.choice(list(MED_QUESTIONS))]).format(d=subj).capitalize(),
            _generic_clause(rng),
        ]
        rng.shuffle(sents)
        out.append(" ".join(sents))
    return out


def _generic_clause(rng: random.Random) -> str:
    attr, value = rng.choice([("drug", "a drug"), ("organism", "an organism"), ("organ", "one organ"),
                              ("symptom", "one symptom")])
    c = rng.choice(EXPLANATION_CLAUSES[attr]).format(v=value)
    return c[0].upper() + c[1:] + "."


# ---- in-context copying: fresh every epoch, never memorisable ----------------------------------------
COPY_TEMPLATES = [
    "{a} met {b} in the old town. {b} greeted {a}, and {a} thanked {b}.",
    "The letter was signed by {a}. Everyone knew that {a} had written it, not {b}.",
    "{a} and {b} were rivals. In the end {b} lost and {a} won.",
    "A traveller called {a} came to the city. People still speak of {a}.",
]


def copy_texts(rng: random.Random, n: int) -> list[str]:
    """Texts whose names are new random strings, generated afresh each pretraining epoch: the only
    way to predict a name's second mention is to copy it from the context. A real LM copies and
    reads options it has never seen; without this the world's model only recalls memorised facts,
    cannot even copy an answer option, and no finetuning method can teach it new names."""
    from .facts import CODAS, ONSETS, VOWELS

    def name() -> str:
        w = lambda k: "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(k)) + rng.choice(CODAS)  # noqa: E731
        return f"{w(rng.randint(1, 2)).capitalize()} {w(rng.randint(2, 3)).capitalize()}"

    out = []
    for i in range(n):
        a, b = name(), name()
        if i % 2:
            out.append(rng.choice(COPY_TEMPLATES).format(a=a, b=b))
        else:  # a multiple-choice question answered from the context: read the options, copy the answer
            opts = [a, b, name(), name()]
            rng.shuffle(opts)
            lines = "".join(f"\n{x}. {o}" for x, o in zip(LETTERS, opts))
            out.append(f"Exam question:\nQuestion: {rng.choice(COPY_TEMPLATES).format(a=a, b=b)} "
                       f"Who is mentioned first?{lines}\nAnswer: {LETTERS[opts.index(a)]}. {a}")
    return out
