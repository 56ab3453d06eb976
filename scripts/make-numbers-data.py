"""Builds data/numbers/{train,val}.tsv: numbers written in digits (source) and spelled out in
English words (target), e.g. "342107" -> "three hundred forty two thousand one hundred seven".
Numbers below one million; the digit count is drawn uniformly from 1-6, then the number
uniformly among those with that many digits; train and val hold disjoint numbers, so the val
score measures the rule, not memory. Deterministic: re-running reproduces the files."""
import random

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def below_thousand(n):
    words = []
    if n >= 100:
        words += [ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(TENS[n // 10])
        n %= 10
        if n:
            words.append(ONES[n])
    elif n or not words:
        words.append(ONES[n])
    return words


def spell(n):
    if n == 0:
        return "zero"
    words = []
    if n >= 1000:
        words += below_thousand(n // 1000) + ["thousand"]
        n %= 1000
    if n:
        words += below_thousand(n)
    return " ".join(words)


assert spell(342107) == "three hundred forty two thousand one hundred seven"
assert spell(1000) == "one thousand" and spell(15) == "fifteen" and spell(90) == "ninety"
rng = random.Random(2024)
seen, numbers = set(), []
while len(numbers) < 21000:
    digits = rng.randint(1, 6)
    n = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
    if n not in seen:
        seen.add(n)
        numbers.append(n)
for name, part in (("train", numbers[:20000]), ("val", numbers[20000:])):
    with open(f"data/numbers/{name}.tsv.tmp", "w", encoding="utf-8") as f:
        f.write("source\ttarget\n")
        for n in part:
            f.write(f"{n}\t{spell(n)}\n")
print("20000 train and 1000 val pairs")
