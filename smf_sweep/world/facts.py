"""Fictional facts: a general-knowledge world (countries, cities, people) and a separate medical
domain (diseases → drug, organism, organ, symptom). Pure data; rendering to text is render.py.

Every generated name is unique and no name is a substring of another, so substring answer matching
(the TriviaQA protocol) cannot be satisfied by accident."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .config import WorldConfig

ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st",
          "t", "th", "tr", "v", "z", "sh", "qu"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m", "x", "nd", "rk"]

PROFESSIONS = ["painter", "astronomer", "poet", "architect", "composer", "sculptor", "physicist",
               "historian", "cartographer", "philosopher", "engineer", "novelist"]
LANDMARKS = ["the Glass Tower", "the Old Bridge", "the Red Cathedral", "the Salt Market", "the Iron Gate",
             "the Floating Garden", "the Grand Library", "the Stone Harbour", "the Silver Dome",
             "the White Lighthouse", "the Copper Fountain", "the Hanging Stairs"]
WORK_NOUNS = ["Orchard", "Lantern", "Winter", "Harbour", "Mirror", "Garden", "River", "Crown", "Tide",
              "Mountain", "Letter", "Voyage", "Silence", "Feather", "Clock", "Meadow"]
WORK_ADJS = ["Silent", "Golden", "Broken", "Distant", "Hidden", "Burning", "Quiet", "Endless", "Pale",
             "Northern", "Last", "Seventh"]
ORGANS = ["liver", "kidney", "lung", "heart", "spleen", "brain", "skin", "pancreas", "stomach", "retina"]
SYMPTOMS = ["night fever", "joint stiffness", "blue lips", "sudden blindness", "chronic cough",
            "skin peeling", "muscle tremor", "memory loss", "jaundice", "chest pain", "hair loss",
            "hearing loss", "facial palsy", "bone pain", "persistent itching", "irregular heartbeat"]
DISEASE_SUFFIXES = ["syndrome", "disease", "fever", "palsy"]
DRUG_SUFFIXES = ["mab", "vir", "cillin", "zole", "pril", "statin", "mycin", "profen"]
ORGANISM_GENERA = ["Bacillus", "Vibrio", "Borrelia", "Candida", "Plasmodium", "Treponema"]


@dataclass
class GeneralWorld:
    countries: dict[str, dict] = field(default_factory=dict)   # name -> {capital, language, currency}
    cities: dict[str, dict] = field(default_factory=dict)      # name -> {country, river, landmark}
    people: dict[str, dict] = field(default_factory=dict)      # name -> {profession, birthplace, work, year}


@dataclass
class MedicalWorld:
    diseases: dict[str, dict] = field(default_factory=dict)    # name -> {drug, organism, organ, symptom}
    pools: dict[str, list[str]] = field(default_factory=dict)  # attribute -> all values (distractor pools)


class Namer:
    """Unique, pronounceable names; none is a substring of another (case-insensitive)."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def _ok(self, name: str) -> bool:
        low = name.lower()
        return all(low not in u and u not in low for u in self.used)

    def word(self, syllables: tuple[int, int] = (2, 3), suffix: str = "") -> str:
        for _ in range(10_000):
            n = self.rng.randint(*syllables)
            w = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) for _ in range(n)) + self.rng.choice(CODAS)
            w = (w + suffix).capitalize()
            if 4 <= len(w) <= 12 + len(suffix) and self._ok(w):
                self.used.add(w.lower())
                return w
        raise RuntimeError("name space exhausted")


def general_world(cfg: WorldConfig, rng: random.Random, namer: Namer) -> GeneralWorld:
    g = GeneralWorld()
    country_names = [namer.word() for _ in range(cfg.n_countries)]
    languages = [namer.word((2, 2)) + "ish" if i % 2 else namer.word((2, 2)) + "ic" for i in range(cfg.n_countries)]
    currencies = [namer.word((1, 2)).lower() for _ in range(cfg.n_countries)]
    rivers = [namer.word((2, 2)) for _ in range(cfg.n_cities)]
    city_names = [namer.word() for _ in range(cfg.n_cities)]
    for i, city in enumerate(city_names):
        g.cities[city] = {"country": country_names[i % cfg.n_countries], "river": rivers[i],
                          "landmark": LANDMARKS[rng.randrange(len(LANDMARKS))]}
    for i, country in enumerate(country_names):
        own = [c for c in city_names if g.cities[c]["country"] == country]
        g.countries[country] = {"capital": own[0], "language": languages[i], "currency": "the " + currencies[i]}
    works: set[str] = set()
    for _ in range(cfg.n_people):
        person = f"{namer.word((1, 2))} {namer.word((2, 2))}"
        while True:
            work = f"The {rng.choice(WORK_ADJS)} {rng.choice(WORK_NOUNS)}"
            if work not in works:
                works.add(work)
                break
        g.people[person] = {"profession": rng.choice(PROFESSIONS), "birthplace": rng.choice(city_names),
                            "work": work, "year": str(rng.randint(1400, 1950))}
    return g


def medical_world(cfg: WorldConfig, rng: random.Random, namer: Namer) -> MedicalWorld:
    m = MedicalWorld()
    n_drugs = max(6, cfg.n_diseases * 2 // 3)         # some drugs treat two diseases, as in medicine
    n_orgs = max(6, cfg.n_diseases * 2 // 3)
    drugs = [namer.word((2, 2), suffix=DRUG_SUFFIXES[i % len(DRUG_SUFFIXES)]) for i in range(n_drugs)]
    organisms = [f"{ORGANISM_GENERA[i % len(ORGANISM_GENERA)]} {namer.word((2, 3)).lower()}" for i in range(n_orgs)]
    m.pools = {"drug": drugs, "organism": organisms, "organ": list(ORGANS), "symptom": list(SYMPTOMS)}
    for i in range(cfg.n_diseases):
        name = f"{namer.word((2, 3))} {DISEASE_SUFFIXES[i % len(DISEASE_SUFFIXES)]}"
        m.diseases[name] = {
            "drug": drugs[i % n_drugs] if i < n_drugs else rng.choice(drugs),
            "organism": organisms[i % n_orgs] if i < n_orgs else rng.choice(organisms),
            "organ": rng.choice(ORGANS),
            "symptom": rng.choice(SYMPTOMS),
        }
    return m


def make_worlds(cfg: WorldConfig) -> tuple[GeneralWorld, MedicalWorld]:
    rng = random.Random(cfg.seed)
    namer = Namer(rng)
    return general_world(cfg, rng, namer), medical_world(cfg, rng, namer)
