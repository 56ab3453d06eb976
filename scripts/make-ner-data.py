"""Builds data/ner/{train,val}.conll: sentences of the Shakespeare corpus in data/ with person
(PER) and place (LOC) names tagged in IOB2 by a hand-made gazetteer of the eight plays'
characters and places (longest match first, case-sensitive), one `word TAG` per line and a
blank line between sentences (CoNLL style). A silver standard: a name used as a title or a
common word is tagged all the same. Two thirds of the sentences hold a name. Deterministic:
re-running reproduces the files. Usage: python3 scripts/make-ner-data.py"""
import random
import re

PER = """Hamlet Claudius Polonius Horatio Laertes Ophelia Gertrude Fortinbras Rosencrantz Guildenstern
Osric Marcellus Bernardo Francisco Reynaldo Voltimand Cornelius Yorick Macbeth Banquo Duncan
Malcolm Donalbain Macduff Lennox Menteith Caithness Fleance Siward Seyton Hecate Lear Goneril
Regan Cordelia Edgar Edmund Oswald Othello Desdemona Iago Cassio Roderigo Brabantio Emilia Bianca
Gratiano Lodovico Montano Romeo Juliet Tybalt Mercutio Benvolio Capulet Montague Escalus Rosaline
Balthasar Sampson Caesar Brutus Cassius Casca Cinna Antony Octavius Lepidus Cicero Portia Calpurnia
Trebonius Ligarius Decius Metellus Cimber Titinius Messala Pindarus Pompey Coriolanus Marcius
Menenius Agrippa Cominius Aufidius Tullus Volumnia Virgilia Valeria Sicinius Lartius Cleopatra
Enobarbus Charmian Iras Octavia Dolabella Maecenas Menas Alexas Mardian Scarus Ventidius Pompeius
Thyreus Proculeius""".split() + [
    "Julius Caesar", "Octavius Caesar", "Mark Antony", "Marcus Brutus", "Decius Brutus", "Junius Brutus",
    "Metellus Cimber", "Caius Marcius", "Caius Cassius", "Tullus Aufidius", "Menenius Agrippa",
    "Titus Lartius", "Sextus Pompeius", "Friar Lawrence", "Friar John", "Lady Capulet", "Lady Montague",
    "Lady Macbeth", "Lady Macduff", "Young Siward", "Domitius Enobarbus", "Marcus Antonius",
]
LOC = """Denmark Norway Poland England Scotland Wittenberg Elsinore Rome Egypt Athens Venice Cyprus
Verona Mantua Rhodes Aleppo Mauritania Britain Dover Inverness Forres Fife Dunsinane Birnam Scone
Colmekill Ireland Antium Corioli Corioles Philippi Sardis Alexandria Actium Misenum Parthia Italy
Greece Africa Troy Tiber Nile Capitol Sicily Naples Florence Spain Arabia Lydia Mesopotamia Armenia
Cilicia Phoenicia Syria Thessaly Pontus Libya Cappadocia Paphlagonia Thrace Judea""".split() + [
    "Birnam wood", "Dunsinane hill",
]
GAZETTEER = sorted(((tuple(n.split()), "PER") for n in PER), key=lambda e: -len(e[0]))
GAZETTEER = sorted(GAZETTEER + [(tuple(n.split()), "LOC") for n in LOC], key=lambda e: -len(e[0]))
SINGLE = {words[0]: kind for words, kind in GAZETTEER if len(words) == 1}


def words_of(sentence):
    """Words and punctuation marks; a name's possessive `'s` is a word of its own."""
    out = []
    for w in re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)*|[0-9]+|[^\sA-Za-z0-9]", sentence):
        if w.endswith("'s") and w[:-2] in SINGLE:
            out += [w[:-2], "'s"]
        else:
            out.append(w)
    return out


def tags_of(words):
    tags, i = ["O"] * len(words), 0
    while i < len(words):
        for name, kind in GAZETTEER:
            if tuple(words[i : i + len(name)]) == name:
                tags[i : i + len(name)] = [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
                i += len(name)
                break
        else:
            i += 1
    return tags


text = open("data/shakespeare.txt", encoding="utf-8").read()
# Speech text only: drop speaker names (upper-case or abbreviated lines) and stage directions.
lines = [l.strip() for l in text.splitlines()]
lines = [
    l for l in lines
    if l and not l.isupper() and not re.fullmatch(r"[A-Z][A-Za-z. ]{0,20}\.", l)
    and not l.startswith(("Enter", "Exit", "Exeunt", "[", "SCENE", "ACT"))
]
flat = re.sub(r"\s+", " ", " ".join(lines))
seen, named, plain = set(), [], []
for s in re.split(r"(?<=[.!?])\s+", flat):
    words = words_of(s)
    if not 5 <= len(words) <= 40 or s in seen:
        continue
    seen.add(s)
    tags = tags_of(words)
    (named if any(t != "O" for t in tags) else plain).append((words, tags))
rng = random.Random(4321)
sentences = named + rng.sample(plain, len(named) // 2)
rng.shuffle(sentences)
sentences = sentences[:3000]
cut = len(sentences) * 5 // 6
for name, part in (("train", sentences[:cut]), ("val", sentences[cut:])):
    with open(f"data/ner/{name}.conll", "w", encoding="utf-8") as f:
        f.write("\n".join("\n".join(f"{w} {t}" for w, t in zip(*s)) + "\n" for s in part))
entities = sum(t.startswith("B-") for _, tags in sentences for t in tags)
print(f"{len(sentences)} sentences ({len(named)} with a name available), {entities} names: {cut} train, "
      f"{len(sentences) - cut} val")
