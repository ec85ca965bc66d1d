"""The embedded default dataset: SYNTHETIC short messages about four topics.

Deterministic for a seed. Heterogeneity between clients is built in three ways:
- label skew: each client's topic mix is drawn from Dirichlet(0.5);
- phrasing: each client has its own openers and sign-offs;
- labelling: words with two senses ("apple", "python", "java", ...) carry the topic of
  the client's group. Half the clients read "python" as tech, the others as animals,
  so no single global adapter can label those messages right for every client; a
  personalized one can.
"""

from __future__ import annotations

import random

LABELS = ["tech", "food", "animals", "travel"]

TOPIC_WORDS = {
    "tech": ["laptop", "server", "keyboard", "software update", "compiler", "database", "router",
             "smartphone", "processor", "algorithm", "firmware", "web browser", "graphics card", "spreadsheet"],
    "food": ["garlic", "pasta", "recipe", "oven", "soup", "cheese", "bakery", "spices",
             "dessert", "salad", "noodles", "sandwich", "pancakes", "curry"],
    "animals": ["elephant", "parrot", "tiger", "dolphin", "kitten", "wolf", "giraffe", "puppy",
                "eagle", "horse", "rabbit", "turtle", "hamster", "owl"],
    "travel": ["airport", "passport", "hotel", "luggage", "beach resort", "flight", "museum",
               "train station", "cruise", "hostel", "visa", "itinerary", "boarding pass", "road trip"],
}

# Word -> (sense for group 0, sense for group 1).
AMBIGUOUS = {
    "apple": ("tech", "food"),
    "python": ("tech", "animals"),
    "java": ("tech", "travel"),
    "cookie": ("tech", "food"),
    "mouse": ("tech", "animals"),
    "amazon": ("tech", "travel"),
    "jaguar": ("animals", "travel"),
    "turkey": ("food", "travel"),
    "bass": ("food", "animals"),
    "crane": ("animals", "travel"),
    "chip": ("food", "tech"),
    "bat": ("animals", "food"),
}

CLEAR_TEMPLATES = [
    "{open} the {w} was on my mind all day {close}",
    "{open} can anyone recommend a good {w} {close}",
    "{open} i spent the evening reading about the {w} and the {w2} {close}",
    "{open} my friend showed me a new {w} {close}",
    "{open} thinking about {w} again, and also {w2} {close}",
    "{open} is the {w} worth it? {close}",
]
NEUTRAL_TEMPLATES = [
    "{open} i keep talking about {w} {close}",
    "{open} any thoughts on {w}? {close}",
    "{open} {w} is all anyone here talks about {close}",
    "{open} saw something about {w} today {close}",
]
OPENERS = ["hey,", "so", "ok", "honestly", "fyi", "quick one:", "well", "hi all,", "ugh", "random thought:", "btw", "listen,"]
CLOSERS = ["lol", "thanks!", "!!", "...", "cheers", "any tips?", "haha", "right?", "xoxo", "fwiw", ":)", "ttyl"]
AMBIGUOUS_SHARE = 0.4


def generate(num_clients: int = 8, seed: int = 0, min_size: int = 120, max_size: int = 220) -> list[dict[str, str]]:
    """Rows with `text`, `label` and `client_id`, reproducible for (num_clients, seed)."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for client in range(num_clients):
        group = client % 2
        mix = [rng.gammavariate(0.5, 1.0) + 1e-3 for _ in LABELS]
        opens, closes = rng.sample(OPENERS, 2), rng.sample(CLOSERS, 2)
        for _ in range(rng.randint(min_size, max_size)):
            label = rng.choices(LABELS, weights=mix)[0]
            ambiguous = [w for w, senses in AMBIGUOUS.items() if senses[group] == label]
            slots = {"open": rng.choice(opens), "close": rng.choice(closes)}
            if ambiguous and rng.random() < AMBIGUOUS_SHARE:
                text = rng.choice(NEUTRAL_TEMPLATES).format(w=rng.choice(ambiguous), **slots)
            else:
                w, w2 = rng.sample(TOPIC_WORDS[label], 2)
                text = rng.choice(CLEAR_TEMPLATES).format(w=w, w2=w2, **slots)
            rows.append({"text": text, "label": label, "client_id": f"client-{client:02d}"})
    return rows
