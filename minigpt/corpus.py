"""The embedded default corpus: short stories about animals and things, in the deck's world.

The text is written by a small seeded grammar below (no outside text), saved as
`minigpt/corpus.txt` so a fresh install trains without a download. The world has rules a model can
learn: each animal has its own food, sound, home and way of moving; singular subjects take "is",
plural ones "are"; a story keeps its animal. Regenerate the file (byte for byte the same) with:

    python -m minigpt.corpus
"""

import random
from importlib import resources
from pathlib import Path

SEED = 5
TARGET_CHARS = 300_000

# name: (plural, foods, sound, home, moves)
ANIMALS = {
    "cat": ("cats", ["fish", "milk", "mouse"], "meow", "house", ["ran", "walked", "jumped"]),
    "dog": ("dogs", ["bone", "meat", "ball"], "woof", "yard", ["ran", "walked", "jumped"]),
    "bird": ("birds", ["seeds", "worm", "bread"], "tweet", "nest", ["flew", "hopped"]),
    "fish": ("fish", ["bugs", "weeds"], "blub", "pond", ["swam"]),
    "fox": ("foxes", ["eggs", "berries", "meat"], "yip", "den", ["ran", "crept"]),
    "mouse": ("mice", ["cheese", "seeds", "corn"], "squeak", "hole", ["ran", "crept"]),
    "cow": ("cows", ["grass", "hay"], "moo", "barn", ["walked"]),
    "duck": ("ducks", ["bread", "weeds", "bugs"], "quack", "pond", ["swam", "flew", "walked"]),
    "frog": ("frogs", ["flies", "bugs"], "ribbit", "pond", ["hopped", "swam"]),
    "horse": ("horses", ["hay", "apples", "oats"], "neigh", "barn", ["ran", "walked"]),
    "pig": ("pigs", ["corn", "apples", "mud pie"], "oink", "pen", ["ran", "walked"]),
    "sheep": ("sheep", ["grass", "hay"], "baa", "field", ["walked", "ran"]),
    "rabbit": ("rabbits", ["carrots", "grass", "lettuce"], "sniff", "burrow", ["hopped", "ran"]),
    "owl": ("owls", ["mice", "bugs"], "hoot", "tree", ["flew"]),
    "bee": ("bees", ["nectar", "honey"], "buzz", "hive", ["flew"]),
    "goat": ("goats", ["grass", "hay", "paper"], "meh", "hill", ["jumped", "walked"]),
    "hen": ("hens", ["corn", "seeds", "worms"], "cluck", "coop", ["walked", "ran"]),
    "bear": ("bears", ["honey", "berries", "fish"], "growl", "cave", ["walked", "ran"]),
    "lion": ("lions", ["meat"], "roar", "den", ["ran", "walked"]),
    "ant": ("ants", ["crumbs", "sugar"], "tick", "hill", ["crept", "walked"]),
}
THINGS = ["mat", "rug", "box", "bed", "chair", "table", "log", "rock", "hat", "sofa", "fence",
          "wall", "roof", "bench", "boat", "blanket", "pillow", "basket", "step", "bucket"]
PLACES = ["garden", "park", "farm", "pond", "river", "forest", "field", "house", "kitchen",
          "yard", "beach", "market", "school", "town", "hill", "meadow"]
ADJECTIVES = ["small", "big", "little", "old", "young", "happy", "sad", "sleepy", "hungry",
              "brave", "quiet", "loud", "red", "brown", "black", "white", "soft", "fat", "thin",
              "fast", "slow", "clever", "lazy", "funny", "shy", "kind", "grey", "tiny"]
STATES = ["happy", "sad", "sleepy", "hungry", "tired", "cold", "warm", "busy", "calm", "cross"]
TOY_COLOURS = ["red", "blue", "green", "yellow", "pink", "orange", "purple"]
NAMES = ["tom", "anna", "ben", "lily", "sam", "mia", "max", "zoe", "leo", "ella", "jack", "rosa"]
RESTS = ["sat", "slept", "lay", "stood", "sat"]
TIMES = ["in the morning", "at night", "after lunch", "on a sunny day", "when it rained",
         "in the evening", "one day", "in the spring", "in the winter", "at noon"]
THEN = ["then", "after that", "later", "soon", "next"]
ENDINGS = ["it was a good day.", "the end.", "everyone was happy.", "it was a long day.",
           "then it went to sleep.", "and that was that."]


def _sentence(rng: random.Random, animal: str, subject: str) -> str:
    """One sentence about `animal`, named `subject` ("the cat", "it", "the small cat")."""
    plural, foods, sound, home, moves = ANIMALS[animal]
    other = rng.choice([a for a in ANIMALS if a != animal])
    kind = rng.randrange(12)
    if kind == 0:
        return f"{subject} {rng.choice(RESTS)} on the {rng.choice(THINGS)}."
    if kind == 1:
        return f"{subject} {rng.choice(moves)} to the {rng.choice(PLACES)}."
    if kind == 2:
        return f"{subject} ate the {rng.choice(foods)}."
    if kind == 3:
        return f"{subject} said {sound}."
    if kind == 4:
        return f"{subject} was {rng.choice(STATES)}."
    if kind == 5:
        return f"{subject} saw the {other} near the {rng.choice(PLACES)}."
    if kind == 6:
        return f"{subject} played with the {rng.choice(TOY_COLOURS)} ball."
    if kind == 7:
        return f"{subject} went back to its {home}."
    if kind == 8:
        return f"{subject} hid under the {rng.choice(THINGS)}."
    if kind == 9:
        food = rng.choice(foods)
        return f"{subject} was hungry, so it ate some {food}."
    if kind == 10:
        return f"{subject} made friends with the {other}."
    return f"{rng.choice(TIMES)}, {subject} {rng.choice(moves)} to the {rng.choice(PLACES)}."


def _fact(rng: random.Random) -> str:
    """A general sentence about the world: plurals, homes, owners."""
    animal = rng.choice(list(ANIMALS))
    plural, foods, sound, home, _ = ANIMALS[animal]
    kind = rng.randrange(6)
    if kind == 0:
        return f"{plural} like {rng.choice(foods)}."
    if kind == 1:
        return f"the {plural} are {rng.choice(STATES)}."
    if kind == 2:
        return f"the {animal} is {rng.choice(STATES)}."
    if kind == 3:
        return f"a {animal} lives in a {home}."
    if kind == 4:
        return f"{rng.choice(NAMES)} has a {rng.choice(ADJECTIVES)} {animal}."
    return f"{rng.choice(NAMES)} gave the {animal} some {rng.choice(foods)}."


def _story(rng: random.Random) -> str:
    animal = rng.choice(list(ANIMALS))
    full = f"the {rng.choice(ADJECTIVES)} {animal}"
    sentences = [_sentence(rng, animal, full)]
    for _ in range(rng.randint(2, 5)):
        subject = rng.choice(["it", f"the {animal}", "it"])
        sentence = _sentence(rng, animal, subject)
        if rng.random() < 0.3:
            sentence = f"{rng.choice(THEN)} {sentence}"
        sentences.append(sentence)
    if rng.random() < 0.4:
        sentences.append(_fact(rng))
    if rng.random() < 0.3:
        sentences.append(rng.choice(ENDINGS))
    return " ".join(sentences)


def generate_corpus(seed: int = SEED, target_chars: int = TARGET_CHARS) -> str:
    """Stories, one per line, until the text reaches target_chars. Same seed, same text."""
    rng = random.Random(seed)
    # The deck's own sentence opens the corpus, so its prompt is at home here.
    lines = ["the cat sat on the mat. it was warm. then it went to sleep."]
    size = len(lines[0]) + 1
    while size < target_chars:
        lines.append(_story(rng))
        size += len(lines[-1]) + 1
    return "\n".join(lines) + "\n"


def with_repeats(text: str, passes: int = 8, seed: int = SEED) -> str:
    """The text's lines, `passes` times over, each followed by a list of 4 to 16 random words of
    its own vocabulary said twice: "... it was warm. fox corn hat ran . fox corn hat ran ." The
    second copy can be predicted only by looking back at what followed the current word last
    time (an induction head): the lists vary in length, so no fixed offset finds it, and every
    list is new, so none can be learned by heart (one pass, 4,400 lists, is learned instead).
    The stories repeat from pass to pass, so a val split holds stories that training saw; only
    its lists are new. Same text, passes and seed, same result."""
    rng = random.Random(seed)
    vocabulary = sorted({word.strip(".,") for word in text.split()} - {""})
    lines = []
    for _ in range(passes):
        for line in text.splitlines():
            words = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(4, 16)))
            lines.append(f"{line} {words} . {words} .")
    return "\n".join(lines) + "\n"


def load_corpus() -> str:
    """The embedded corpus, as shipped in the package."""
    return resources.files("minigpt").joinpath("corpus.txt").read_text(encoding="utf-8")


def main() -> None:
    path = Path(__file__).with_name("corpus.txt")
    text = generate_corpus()
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path} ({len(text):,} characters)")


if __name__ == "__main__":
    main()
