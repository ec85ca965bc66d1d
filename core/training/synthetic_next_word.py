"""The embedded next-word corpus: SYNTHETIC keyboard messages from users who write differently.

Deterministic for (num_clients, seed), pure Python. Every user shares one grammar: the
message templates, their word alternatives and the common slot pools (days, foods,
errands, things, weather, moods), which is what a global adapter can learn. Each user also
has a profile drawn from large pools, users taking disjoint slices of them (no two users of
one corpus share a contact, place, topic, greeting or sign-off up to 15 users; beyond
that the pools are reshuffled and items repeat):

- contacts (a best friend first: mentioned most), favourite places, two hobby/work topics
  with their own words, what they call their mother;
- a greeting, a sign-off, 2-3 pet phrases, 2 interjections, how they write times
  (`7pm`, `19:00`, `7ish`) and how they end a sentence (`!!`, `...`, nothing);
- spelling habits: `u`/`ur`, `tmrw`, `gonna`/`wanna`, `pls`/`thx`, `rn`/`bc`, `&`,
  no apostrophes, all lowercase, no commas.

Only a user's own history predicts those, which is what personalization learns. Messages
keep entropy (template, slots, times, numbers, days, optional parts all vary), so the
model cannot memorize a user's rows in a dozen steps. A message has 6-30 words (at most
~40 SmolLM2 tokens; docs/development.md, issue 25).
"""

from __future__ import annotations

import random
import re

MIN_WORDS = 6
MAX_WORDS = 30
MAX_COST = 34  # _cost's bound: at most 41 SmolLM2 tokens over 14,400 rows of 30 seeds

NAMES = """
Ana Ben Chloe Dev Ella Finn Gia Hugo Iris Jonah Kira Leo Maya Nico Olive Pablo Quinn Rosa Sami
Tara Umar Vera Wes Xena Yusuf Zoe Aiden Bella Caleb Daria Emil Farah Gus Hana Ivan Jade Kofi Lena
Marco Nadia Omar Petra Rafi Sofia Theo Uma Vik Willa Yara Zane Amir Bianca Cyrus Dina Elias Fiona
Gabe Helga Ines Jasper Kai Lucia Milo Nora Oscar Priya Reza Selma Tomas Ursula Vlad Wren Yosef
Alma Bruno Celine Dario Esme Felix Greta Hector Ingrid Joel Kemal Lola Mateo Nell Otto Pia Rhys
Sana Tobias Ugo Valentina Wanda Ximena Yuki Zora Ada Boris Cora Diego Edie Flora Georgi Hattie
Isaac Juno Karim Luna Magnus Noor Orla Percy Ruth Silas Tess Viktor Winnie Zeke Anouk Basil
Clara Dmitri Elif Fern Gideon Harriet Idris Jun Keanu Linnea Moses Nika Odette Paloma Raul Saskia
Talia Ulla Vito Wilma Yanis Zsofia Arlo Birdie Cosmo Delia Ezra Frida Grover Hazel Ilya Josie
Kwame Leila Mabel Nils Ottilie Pip Rowan Sunny Thea Ulrich Vivi Walt Yvette Zadie Amos Beatrix
Cillian Dora Enzo Freya Gilda Hamish Imogen Jorge Kit Lotte Mirela Ned Opal Pedro Rocco Stellan
Tamsin Vilma Wolf Xavi Yoko Zelda
""".split()

PLACE_PREFIXES = """
Juniper Copper Maple Harbor Willow Cedar Birch Ember Falcon Granite Hazel Ivy Jasmine Kestrel
Linden Marble Nutmeg Orchard Pebble Quarry Raven Saffron Thistle Umber Velvet Walnut Yarrow
Acorn Bramble Cobalt Driftwood Elder Fennel Garnet Heron Indigo Juniperhill Kingfisher Lantern
Meadow Northgate Oakridge Pinecone Quayside Redbrick Silverlake Tidewater Upland Vineyard
Westbrook Amber Beacon Clover Dovecote Eastfield Foxglove Goldfinch Highgate Ironbridge
Jubilee Larkspur Mulberry Nettlebed Otterburn Primrose Riverside Sandpiper Tamarind Wisteria
Alder Blackthorn Chestnut Damson Everton Firecrest Greenway Holloway Islington Kelpie Lavender
Millbrook Northwind Olive Parkhill Rosemary Stonebridge Tulip Violet Whitecliff Ashford
Bluebell Coriander Dunmore Elmwood Fairview Gorse Hollyhock
""".split()

PLACE_KINDS = ["Park", "Cafe", "Market", "Library", "Gym", "Bakery", "Street", "Diner", "Square",
               "Pool", "Cinema", "Bar", "Station", "Bookshop", "Mall", "Pub", "Studio", "Arcade",
               "Garden", "Pier"]

# topic -> (activities: verb phrases after "to", items: noun phrases after "my" / "the")
TOPICS = {
    "climbing": (["go climbing", "hit the bouldering wall", "try that overhang route"],
                 ["chalk bag", "climbing shoes", "harness", "belay device", "crash pad"]),
    "running": (["go for a run", "do my long run", "run the river loop"],
                ["running shoes", "race bib", "fitness watch", "foam roller", "water belt"]),
    "baking": (["bake sourdough", "try a new cake recipe", "make cinnamon rolls"],
               ["sourdough starter", "stand mixer", "proofing basket", "rolling pin", "piping bag"]),
    "gardening": (["weed the allotment", "plant the tomatoes", "repot the ferns"],
                  ["seed trays", "pruning shears", "compost bin", "watering can", "greenhouse"]),
    "gaming": (["finish that boss fight", "play the new raid", "grind some ranked matches"],
               ["controller", "gaming headset", "graphics card", "save file", "season pass"]),
    "guitar": (["practice guitar", "learn that solo", "jam with the band"],
              ["guitar strings", "capo", "amp", "pedal board", "guitar pick"]),
    "photography": (["shoot the sunset", "edit my photos", "try the new lens"],
                    ["tripod", "camera bag", "zoom lens", "memory card", "lens cap"]),
    "knitting": (["finish the scarf", "knit a few rows", "cast on a new sweater"],
                 ["knitting needles", "yarn stash", "stitch markers", "pattern book", "wool"]),
    "cycling": (["ride to the coast", "go for a bike ride", "do the hill climb"],
                ["bike helmet", "inner tube", "bike lights", "saddle bag", "cleats"]),
    "yoga": (["go to yoga", "do a sunrise flow", "stretch for an hour"],
             ["yoga mat", "yoga blocks", "meditation app", "yoga strap", "bolster"]),
    "nursing": (["cover a night shift", "finish my rota swap", "sleep after the ward round"],
                ["scrubs", "stethoscope", "shift rota", "badge", "nursing notes"]),
    "coding": (["fix that bug", "push the release", "review the pull request"],
               ["laptop", "second monitor", "mechanical keyboard", "deploy script", "test suite"]),
    "teaching": (["mark the essays", "plan the next lesson", "run the parents evening"],
                 ["lesson plan", "whiteboard markers", "marking pile", "class register", "lanyard"]),
    "chess": (["play a few blitz games", "study the endgame", "go to chess club"],
              ["chess clock", "opening book", "chess board", "puzzle app", "rating"]),
    "painting": (["paint the seascape", "start a new canvas", "sketch at the museum"],
                 ["watercolors", "easel", "paint brushes", "sketchbook", "palette knife"]),
    "fishing": (["go fishing at dawn", "fish off the jetty", "tie some new flies"],
                ["fishing rod", "tackle box", "reel", "waders", "bait"]),
    "surfing": (["catch the morning swell", "go surfing", "paddle out at low tide"],
                ["surfboard", "wetsuit", "board wax", "leash", "surf forecast"]),
    "cooking": (["make a big curry", "try that pasta recipe", "meal prep for the week"],
                ["cast iron pan", "chef knife", "spice rack", "slow cooker", "recipe book"]),
    "football": (["play five a side", "watch the derby", "train with the team"],
                 ["football boots", "shin pads", "season ticket", "team shirt", "goalie gloves"]),
    "dogs": (["walk the dog", "take the puppy to training", "go to the dog park"],
             ["dog lead", "chew toy", "dog bed", "treat pouch", "puppy crate"]),
    "cats": (["feed the cats", "take the cat to the vet", "clean the litter tray"],
             ["cat tree", "scratching post", "cat carrier", "laser pointer", "litter box"]),
    "woodwork": (["finish the bookshelf", "sand the table", "cut the dovetails"],
                 ["chisel set", "workbench", "sander", "wood glue", "clamps"]),
    "birdwatching": (["go birding at the marsh", "count the geese", "check the feeders"],
                     ["binoculars", "bird guide", "field notebook", "spotting scope", "bird feeder"]),
    "swimming": (["swim some lengths", "do the open water swim", "go to the lido"],
                 ["goggles", "swim cap", "kickboard", "swimsuit", "pull buoy"]),
    "hiking": (["hike the ridge", "walk the coastal path", "climb the fell"],
               ["hiking boots", "rucksack", "trail map", "walking poles", "head torch"]),
    "pottery": (["throw some bowls", "glaze the mugs", "go to the pottery class"],
                ["pottery wheel", "kiln", "clay", "glaze", "trimming tools"]),
    "dancing": (["go to salsa class", "practice the routine", "go dancing"],
                ["dance shoes", "rehearsal schedule", "costume", "playlist", "knee pads"]),
    "boardgames": (["host game night", "learn the new board game", "finish the campaign"],
                   ["dice bag", "card sleeves", "game box", "rule book", "expansion"]),
    "skating": (["go skating", "practice kickflips", "hit the skatepark"],
                ["skateboard", "wheels", "grip tape", "wrist guards", "trucks"]),
    "reading": (["finish my novel", "go to book club", "read on the balcony"],
                ["library card", "reading lamp", "bookmark", "e-reader", "audiobook"]),
    "tennis": (["play tennis", "hit some serves", "book a court"],
               ["tennis racket", "tennis balls", "grip tape", "sweatband", "court booking"]),
    "volunteering": (["help at the food bank", "do the beach cleanup", "sort donations"],
                     ["volunteer rota", "hi vis vest", "donation boxes", "litter picker", "clipboard"]),
    "music production": (["mix the new track", "record vocals", "finish the beat"],
                         ["synth", "studio monitors", "microphone", "drum machine", "audio interface"]),
    "sewing": (["hem the trousers", "sew the dress", "fix the curtains"],
               ["sewing machine", "fabric", "thread", "pin cushion", "tape measure"]),
    "astronomy": (["look at the stars", "watch the meteor shower", "set up the telescope"],
                  ["telescope", "star chart", "red torch", "eyepiece", "camping chair"]),
    "rowing": (["row on the river", "do the erg session", "go to rowing practice"],
               ["oars", "rowing machine", "boat club key", "erg log", "rowing gloves"]),
    "languages": (["practice my spanish", "do my language lesson", "go to the language cafe"],
                  ["flash cards", "grammar book", "language app", "phrase book", "vocab list"]),
    "cars": (["fix the car", "change the oil", "take the car for a spin"],
             ["car jack", "spark plugs", "tool kit", "car wax", "spare tyre"]),
    "theatre": (["rehearse my lines", "go to the matinee", "audition for the play"],
                ["script", "stage makeup", "theatre tickets", "costume rail", "prop list"]),
    "camping": (["go camping", "pitch the tent", "cook over the fire"],
                ["tent", "sleeping bag", "camping stove", "lantern", "cool box"]),
}

GREETINGS = ["hey", "hi", "yo", "heya", "hiya", "morning", "hello", "oi", "sup", "howdy", "hey hey",
             "hi hi", "hellooo", "heyyy", "ahoy", "greetings", "evening", "good morning", "yoo",
             "hey you", "hallo", "ello", "hey there", "alright", "hola", "salut", "ciao", "wotcha",
             "hey lovely", "hi friend"]
SIGN_OFFS = ["xx", "cheers", "ttyl", "later", "love you", "byeee", "talk soon", "peace out", "take care",
             "laters", "speak soon", "hugs", "ciao for now", "ta", "much love", "catch you later",
             "have a good one", "over and out", "see ya", "toodles", "mwah", "big hugs", "stay safe",
             "love ya", "night night", "adios", "cya", "bye for now", "keep smiling", "ok bye",
             "ta ra", "chat later", "laterz", "xoxo", "smell ya later", "be good", "godspeed",
             "onwards", "cheerio", "kisses"]
PET_PHRASES = ["no cap", "for real though", "living the dream", "as one does", "send help", "classic",
               "it is what it is", "low key", "big mood", "can't complain", "same old same old",
               "bless", "wild times", "oh well", "say less", "love that for us", "as always",
               "fingers crossed", "knock on wood", "just saying", "trust me", "mark my words",
               "what a week", "such is life", "no biggie", "go team", "here we go again",
               "easy peasy", "so there", "you know the drill", "who knew", "rookie mistake",
               "not my finest hour", "life is good", "plot twist", "story of my life",
               "can't wait", "to be fair", "end of story", "no worries", "how rude", "vibes",
               "chef's kiss", "living my best life", "don't ask", "long story", "small wins",
               "one day at a time", "all good", "touch wood", "bring it on", "happy days",
               "ah well", "tell me about it", "goals", "i'm dead", "the audacity", "nailed it",
               "let's gooo", "what could go wrong"]
INTERJECTIONS = ["ugh", "omg", "lol", "haha", "yikes", "welp", "ooh", "meh", "phew", "oops", "yay",
                 "hmm", "argh", "woohoo", "eek", "sheesh", "aww", "gosh", "yeesh", "crikey",
                 "whoa", "heh", "bah", "yesss", "nooo", "oof", "huh", "wahey", "blimey", "jeez"]
MOTHERS = ["mom", "mum", "ma", "mama", "mother", "mummy", "my mom", "my mum"]

# (after a verb, after "for" / "before"): "on Monday" / "Monday"
DAYS = [("tomorrow", "tomorrow"), ("tonight", "tonight"), ("this weekend", "the weekend"),
        ("next week", "next week"), ("after work", "after work"), ("this afternoon", "this afternoon"),
        ("tomorrow morning", "tomorrow morning"), ("later today", "later today"),
        ("on Friday night", "Friday night"), ("next month", "next month")] + [
        (f"on {day}", day) for day in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                        "Saturday", "Sunday")]
FOODS = ["pizza", "tacos", "sushi", "ramen", "pho", "curry", "burgers", "dumplings", "pad thai",
         "falafel", "bagels", "pancakes", "waffles", "noodles", "fries", "ice cream", "donuts",
         "pasta", "a kebab", "burritos", "croissants", "soup", "salad", "fried chicken",
         "bibimbap", "nachos", "coffee", "bubble tea", "smoothies", "cake", "dim sum", "paella",
         "fish and chips", "a roast", "lasagne", "brownies", "hot pot", "empanadas", "gyoza",
         "a toastie"]
ERRANDS = ["do laundry", "go to the bank", "pick up a parcel", "get groceries", "clean the flat",
           "renew my passport", "see the dentist", "fix my bike", "return some books", "pay rent",
           "buy a present", "get a haircut", "call the landlord", "finish my taxes",
           "pick up my prescription", "take the bins out", "wash the car", "post a letter",
           "book the train", "change the sheets", "defrost the freezer", "sort the recycling"]
THINGS = ["keys", "charger", "umbrella", "jacket", "wallet", "headphones", "water bottle",
          "sunglasses", "scarf", "book", "hat", "notebook", "gloves", "phone", "lunch box",
          "hoodie", "bus pass", "earrings", "glasses", "backpack"]
WEATHER = ["pouring", "freezing", "boiling", "so windy", "snowing", "way too hot", "grey and gross",
           "foggy", "lovely and sunny", "chucking it down", "icy", "humid"]
FEELINGS = ["tired", "exhausted", "hyped", "stressed", "bored", "starving", "sore", "happy", "grumpy",
            "sleepy", "wired", "nervous", "proud", "knackered", "excited", "cranky", "chill", "broke"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve"]

# The shared grammar. Slots: {c} {c2} contacts, {p} place, {t} time, {d} day, {n} minutes,
# {h} hours, {act} activity, {item} topic item, {food} {food2} {errand} {thing} {weather}
# {feel}, {mom}; {d} "on Monday", {day} "Monday". "[a|b|c]" picks one alternative ("[a|]"
# makes a word optional). A template ending in "?" is a question; the others get the user's
# sentence ending.
TEMPLATES = [
    "[Are you|You] free {d}? I'm [heading|going over] to {p} around {t}, [want to come|join me]?",
    "Can you tell {c} I'll be late, [stuck|still] at {p} until {t}",
    "Just got back from {p}, I [need|want] to {act} again soon",
    "I want to {act} {d}, [you in|are you in|who's in]?",
    "Did {c} ever give you back my {item}?",
    "Running {n} minutes late, save me a seat at {p}",
    "{c} and I are getting {food} at {p} {d}",
    "Don't forget we're meeting {c} at {t} {d}",
    "I'm [so|really|super] {feel} today, [going to|want to] {act} after work",
    "Do you know if {p} is open {d}?",
    "Just ordered a new {item}, it should arrive {d}",
    "It's {weather} here, not going to {act} today",
    "Can you [pick up|grab|get] {food} on the way? I'll pay you back",
    "I have to {errand} {d}, then I'm free",
    "Tell {c} thanks for the {food}, it was [amazing|so good|incredible]",
    "I'll call you at {t}, [still|currently|just] at {p}",
    "{mom} wants us over for {food} {d} at {t}",
    "Did you see what {c} posted about the {item}?",
    "Spent {h} hours trying to {act} and I'm {feel}",
    "Are we still on for {t}? {c} might come too",
    "Where did you park? I'm [outside|right outside|near] {p}",
    "Thank you for [yesterday|last night|earlier], I owe you {food}",
    "Can't make it {d}, I have to {errand}",
    "Let me know when you're home, I have your {thing}",
    "Is {c} coming to {p} {d} or not?",
    "Going to {act} with {c} {d}, want to come?",
    "My {item} broke again, I need a new one before {day}",
    "Do you want {food} or {food2} [tonight|for dinner|later]?",
    "Almost at {p}, be there in {n} minutes",
    "I think I left my {thing} at {p}",
    "Happy birthday {c}! See you {d} at {p}",
    "Just saw {c} at {p}, [small world|what are the odds]",
    "We should {act} more often, {d} maybe?",
    "How was {p}? {c} said it was [packed|dead|so loud]",
    "Please remind me to {errand} {d}",
    "Thanks for the tips about the {item}, I'll try {d}",
    "I'm at {p} with {c}, come by after {t}",
    "Are you watching the game [tonight|later]? {c} is coming over at {t}",
    "Can I borrow your {thing} {d}? Mine is [missing|broken|at {p}]",
    "{c} just [texted|called|messaged] me, [apparently|supposedly] {c2} is moving",
    "Is it {weather} where you are? [It's|Really] {weather} at {p}",
    "I [really|honestly|] need to {errand} but I'm so {feel}",
    "Want to get {food} at {p} after I {act}?",
    "Do you still have {c}'s number? I need to ask about the {item}",
    "The bus is [late|cancelled|packed] again, I'll be at {p} by {t}",
    "I'm making {food} tonight, [want some|come over|there's loads]?",
    "Who's bringing the {item} {d}? I can bring {food}",
    "[Just|Finally] finished, going to {act} [now|for a bit|until {t}]",
    "Meet you [outside|at the entrance of|by] {p} at {t}?",
    "Sorry I missed your call, I was at {p} with {c}",
    "Did you book {p} for {day}? [It gets|It's always] busy",
    "Please [don't tell|tell] {c} about the {item}",
    "Only slept {h} hours, I'm [way too|too|far too] {feel} to {act}",
    "Can you feed the [cat|plants|fish] {d}? I'm at {mom}'s",
    "I'm thinking {food} [at|near|from] {p}, [thoughts|yes or no|any better ideas]?",
    "Waiting for {c} at {p}, they said {t} but [nope|no sign yet|classic]",
    "I'll [drop|bring] your {thing} back {d}, sorry",
    "[Guess|You'll never guess] who I ran into at {p}, {c}",
    "Need to {act} {d}, can we move dinner to {t}?",
    "Told {mom} we'd visit {d}, is {t} [okay|alright|fine]?",
]

# Spelling habits: canonical text -> the user's way of writing it (whole words, in order).
HABITS = {
    "u": [(r"\byou're\b", "ur"), (r"\byour\b", "ur"), (r"\byou\b", "u")],
    "tmrw": [(r"\btomorrow\b", "tmrw"), (r"\btonight\b", "tonite")],
    "gonna": [(r"\bgoing to\b", "gonna"), (r"\bwant to\b", "wanna"), (r"\bhave to\b", "gotta")],
    "pls": [(r"\bplease\b", "pls"), (r"\bthanks\b", "thx"), (r"\bthank you\b", "ty")],
    "rn": [(r"\bright now\b", "rn"), (r"\bminutes\b", "mins"), (r"\breally\b", "rly"),
           (r"\bbecause\b", "bc"), (r"\bsorry\b", "soz")],
    "amp": [(r"\band\b", "&")],
    "okay": [(r"\bokay\b", "ok"), (r"\balright\b", "aight"), (r"\bhonestly\b", "tbh")],
}
STYLE_FLAGS = ("lowercase", "no_apostrophes", "no_commas")
STATEMENT_ENDS = ["", ".", "!", "!!", "!!!", "...", " :)", " lol"]
QUESTION_ENDS = ["?", "??", "?!", "???"]
TIME_STYLES = ("pm", "spaced", "clock", "ish", "words", "oclock")

_ALTERNATIVES = re.compile(r"\[([^\[\]]*)\]")
_SLOT = re.compile(r"\{(\w+)\}")
_WORD = re.compile(r"\S+")
_PIECE = re.compile(r"[A-Za-z]+|\d|[^\w\s]+")
_CAPITALIZED = re.compile(r"\b[A-Z][a-z]+")


def _cost(text: str) -> float:
    """A pure-Python stand-in for the token count: a piece per word, digit or punctuation run,
    two for a word over 5 letters, half more for a capitalized one (names split more)."""
    return sum(1 + (len(piece) > 5) for piece in _PIECE.findall(text)) + 0.5 * len(_CAPITALIZED.findall(text))


def _fits(text: str) -> bool:
    return MIN_WORDS <= len(_WORD.findall(text)) <= MAX_WORDS and _cost(text) <= MAX_COST


def _take(seed: int, pool_name: str, pool: list, k: int, user: int) -> list:
    """`k` items of `pool` for `user`: disjoint blocks of a seeded shuffle, reshuffled once used up."""
    blocks = len(pool) // k
    rounds, block = divmod(user, blocks)
    order = sorted(pool)
    random.Random(f"fedpeft-next-word:{seed}:{pool_name}:{rounds}").shuffle(order)
    return order[block * k:(block + 1) * k]


def _profile(seed: int, user: int) -> dict:
    def take(name: str, pool: list, k: int) -> list:
        return _take(seed, name, pool, k, user)

    rng = random.Random(f"fedpeft-next-word:{seed}:{user}")
    names = take("names", NAMES, 6)
    kinds = rng.sample(PLACE_KINDS, 5)
    places = [f"{prefix} {kind}" for prefix, kind in zip(take("places", PLACE_PREFIXES, 5), kinds)]
    topics = take("topics", sorted(TOPICS), 2)
    habits = [h for h in HABITS if rng.random() < 0.4]
    flags = [f for f in STYLE_FLAGS if rng.random() < 0.35]
    return {
        "name": names[0].lower(),
        "contacts": names[1:],
        "places": places,
        "activities": [a for t in topics for a in TOPICS[t][0]],
        "items": [i for t in topics for i in TOPICS[t][1]],
        "mom": rng.choice(MOTHERS),
        "greeting": take("greet", GREETINGS, 1)[0],
        "sign_off": take("sign", SIGN_OFFS, 1)[0],
        "pet_phrases": take("pet", PET_PHRASES, 3)[: rng.choice((2, 3))],
        "interjections": take("inter", INTERJECTIONS, 2),
        "habits": habits,
        "flags": flags,
        "time_style": rng.choice(TIME_STYLES),
        "ends": rng.sample(STATEMENT_ENDS, 2),
        "question_end": rng.choice(QUESTION_ENDS),
        "p_greet": rng.uniform(0.2, 0.5),
        "p_sign": rng.uniform(0.25, 0.6),
        "p_pet": rng.uniform(0.2, 0.4),
        "p_inter": rng.uniform(0.1, 0.3),
    }


def _zipf(rng: random.Random, items: list) -> str:
    """A favourite first: the k-th item is drawn with weight 1/k."""
    return rng.choices(items, weights=[1 / (k + 1) for k in range(len(items))])[0]


def _time(rng: random.Random, style: str) -> str:
    hour = rng.randint(1, 11)
    minute = rng.choice((0, 0, 0, 15, 30, 30, 45))
    if style == "clock":
        return f"{hour + 12 if hour < 10 else hour}:{minute:02d}"
    if style == "words":
        return {0: NUMBER_WORDS[hour], 15: f"quarter past {NUMBER_WORDS[hour]}", 30: f"{NUMBER_WORDS[hour]} thirty",
                45: f"quarter to {NUMBER_WORDS[hour + 1]}"}[minute]
    suffix = "" if minute == 0 else f":{minute:02d}"
    return {"pm": f"{hour}{suffix}pm", "spaced": f"{hour}{suffix} pm", "ish": f"{hour}ish",
            "oclock": f"{hour} o'clock" if minute == 0 else f"{hour}{suffix}"}[style]


def _body(rng: random.Random, profile: dict) -> tuple[str, bool]:
    """One filled template and whether it ends as a question."""
    template = rng.choice(TEMPLATES)
    text = _ALTERNATIVES.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    contacts = rng.sample(profile["contacts"], 2) if rng.random() < 0.5 else [
        _zipf(rng, profile["contacts"]), rng.choice(profile["contacts"])]
    foods = rng.sample(FOODS, 2)
    day = rng.choice(DAYS)
    slots = {
        "c": contacts[0], "c2": contacts[1] if contacts[1] != contacts[0] else profile["contacts"][-1],
        "p": _zipf(rng, profile["places"]), "t": _time(rng, profile["time_style"]),
        "d": day[0], "day": day[1], "n": str(rng.choice((2, 3, 5, 5, 10, 10, 15, 20, 25, 30, 40, 45))),
        "h": str(rng.randint(2, 9)), "act": rng.choice(profile["activities"]),
        "item": rng.choice(profile["items"]), "food": foods[0], "food2": foods[1],
        "errand": rng.choice(ERRANDS), "thing": rng.choice(THINGS), "weather": rng.choice(WEATHER),
        "feel": rng.choice(FEELINGS), "mom": profile["mom"],
    }
    text = _SLOT.sub(lambda m: slots[m.group(1)], text)
    text = re.sub(r"\s+", " ", text).strip()
    if not template.startswith(("{", "I ", "I'")):  # the sentence may follow a greeting
        text = text[0].lower() + text[1:]
    question = text.endswith("?")
    return text.rstrip("?"), question


def _message(rng: random.Random, profile: dict) -> str:
    sentences, prefix, suffix = [], [], []
    for _ in range(2 if rng.random() < 0.2 else 1):  # a second, short sentence now and then
        body, question = _body(rng, profile)
        sentences.append(body + (profile["question_end"] if question else rng.choice(profile["ends"])))
    if rng.random() < profile["p_greet"]:
        who = f" {_zipf(rng, profile['contacts'])}" if rng.random() < 0.4 else ""
        prefix.append(f"{profile['greeting']}{who},")
    if rng.random() < profile["p_inter"]:
        prefix.append(rng.choice(profile["interjections"]) + ",")
    if rng.random() < profile["p_pet"]:
        suffix.append(rng.choice(profile["pet_phrases"]))
    if rng.random() < profile["p_sign"]:
        suffix.append(profile["sign_off"] + (f" {profile['name']}" if rng.random() < 0.3 else ""))
    text = _style(" ".join(prefix + sentences + suffix), profile)
    for optional in (sentences, prefix, prefix, suffix, suffix):  # shorten: the 2nd sentence first
        if not _fits(text) and len(optional) > (optional is sentences):
            optional.pop()
            text = _style(" ".join(prefix + sentences + suffix), profile)
    return text


def _capitalize(text: str) -> str:
    text = re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    return re.sub(r"\bi\b", "I", text)


def _style(text: str, profile: dict) -> str:
    for habit in profile["habits"]:
        for pattern, short in HABITS[habit]:
            text = re.sub(pattern, short, text, flags=re.IGNORECASE)
    flags = profile["flags"]
    if "no_apostrophes" in flags:
        text = text.replace("'", "")
    if "no_commas" in flags:
        text = text.replace(",", "")
    return text.lower() if "lowercase" in flags else _capitalize(text)


def client_name(seed: int, user: int) -> str:
    """The user's `client_id`: a number for order, a first name to read in charts."""
    return f"user-{user:02d} ({_profile(seed, user)['name']})"


def generate(num_clients: int = 8, seed: int = 0, messages: int = 60) -> list[dict[str, str]]:
    """`messages` rows per user with `text` and `client_id`, reproducible for (num_clients, seed).

    A user's profile and messages depend only on (seed, user): the corpus of fewer users
    is a prefix of the one of more.
    """
    rows: list[dict[str, str]] = []
    for user in range(num_clients):
        profile = _profile(seed, user)
        rng = random.Random(f"fedpeft-next-word:{seed}:{user}:messages")
        client_id = f"user-{user:02d} ({profile['name']})"
        for _ in range(messages):
            text = _message(rng, profile)
            while not _fits(text):
                text = _message(rng, profile)
            rows.append({"text": text, "client_id": client_id})
    return rows
