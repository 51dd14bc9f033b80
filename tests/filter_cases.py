"""Rollouts labelled keep or drop as the authors' malformed-rollout gate decides (their train_RASFT.py: the dedupe,
then `looks_gibberish_or_collapsed`, `is_shortcut_sample`, `has_valid_format` on the stripped text), each written
here from their rules, with the rule that decides it. The gold answer is 12 unless the text says otherwise."""


def pad(text, n, filler=" We double-check each step of the work above."):
    """text grown with plain words (no symbols, no reasoning word) to exactly n characters after stripping."""
    while len(text) < n:
        text += filler
    return text[:n] if len(text[:n].strip()) == n else text[:n - 1] + "."


STEPS = "First 3 + 4 = 7 apples, then 7 + 5 = 12 apples after the market visit.\n"
LONG = STEPS + ("Counting every apple she now holds in her basket, one by one from the first she had to the last "
                "she bought, the total comes to twelve.\n")

CASES = [  # (why, text, kept)
    ("clean, boxed, reasoning, long", LONG + "\\boxed{12}", True),
    ("under 80 characters", "3 + 4 = 7 and 7 + 5 = 12, so \\boxed{12}", False),
    ("92 characters ending in a boxed fraction: a box under 120", pad("So half of it: x = 1/2 of the set. ", 73) +
     " \\boxed{\\frac{1}{2}}", False),
    ("98 characters ending in \\boxed{-3}: a box under 120", pad("So the shift is t = -3 units here. ", 88) + " \\boxed{-3}",
     False),
    ("exactly 120 characters, a non-numeric box: kept", pad("So x + 1 = 13 gives the value. ", 120 - 12) + " \\boxed{x+1}",
     True),
    ("119 characters with a box: dropped", pad("So x + 1 = 13 gives the value. ", 119 - 12) + " \\boxed{x+1}", False),
    ("no box at all", LONG + "Final answer: 12", False),
    ("only \\fbox: no box for them", LONG + "\\fbox{12}", False),
    ("only \\boxed 12 without braces: no box", LONG + "\\boxed 12", False),
    ("an earlier complete box, the last one unclosed (cut off): no box", LONG + "\\boxed{12} and also \\boxed{\\frac{",
     False),
    ("an earlier unclosed box, the last one closed: kept", LONG + "\\boxed{\\frac{ no. Redo: \\boxed{12}", True),
    ("escaped braces count as braces: a closed box", LONG + "\\boxed{\\{12\\}}", True),
    ("short numeric box at 179 characters", pad(STEPS, 179 - 11) + " \\boxed{12}", False),
    ("short numeric box at 180 characters: kept", pad(STEPS, 180 - 11) + " \\boxed{12}", True),
    ("short letter box (B) under 180", pad(STEPS + "Option B matches. ", 150) + " \\boxed{B}", False),
    ("box '12.' is '12' once cleaned: short", pad(STEPS, 150) + " \\boxed{12.}", False),
    ("box '$12$' is '12' once cleaned: short", pad(STEPS, 150) + " \\boxed{$12$}", False),
    ("box with a newline is cleaned too: short", pad(STEPS, 150) + " \\boxed{12\n}", False),
    ("box 'x=12' is not a short answer", pad(STEPS, 150) + " \\boxed{x=12}", True),
    ("nested box: the last \\boxed{ is the inner '12': short", pad(STEPS, 150) + " \\boxed{\\boxed{12}}", False),
    ("shortcut: 'Thus, the correct answer is'", LONG + "Thus, the correct answer is 12.\n\\boxed{12}", False),
    ("shortcut: 'the correct answer is: \\boxed'", LONG + "So the correct answer is: \\boxed{12}", False),
    ("shortcut in capitals: the text is lowercased", LONG + "THEREFORE, THE CORRECT ANSWER IS 12. \\boxed{12}", False),
    ("'Therefore,' then a newline: their [, ]+ does not cross it: kept", LONG + "Therefore,\nthe correct answer is 12. "
     "\\boxed{12}", True),
    ("'based on the given information, we know that the correct answer is'", LONG + "Based on the given information, "
     "we know that the correct answer is 12. \\boxed{12}", False),
    ("no reasoning word", "Anna had three apples and got four more and then five more at the market today. "
     "Twelve apples in all. \\boxed{12}", False),
    ("only 'so' before a newline: their 'so ' needs the space", "Anna had three apples and got four more and then five "
     "more at the market today, so\ntwelve apples in all. \\boxed{12}", False),
    ("only 'hence': kept", "Anna had three apples and got four more and then five more at the market today, hence "
     "twelve apples in all. \\boxed{twelve}", True),
    ("over 42% symbols", "$$" * 40 + " so 3 + 4 = 7, 7 + 5 = 12 " + "{}" * 40 + " \\boxed{12}", False),
    ("a sentence of 12+ characters thrice", "We add the apples up.\nWe add the apples up.\nWe add the apples up.\n" + LONG
     + "\\boxed{12}", False),
    ("the same sentence thrice across other whitespace: their loop rules collapse it", "We add the  apples up. We add "
     "the\napples up. We add the\tapples up. " + LONG + "\\boxed{12}", False),
    ("a sentence of 11 characters thrice: kept", "Add them up. Add them up. Add them up. " + LONG + "\\boxed{12}", True),
    ("an 8-word run thrice in 30+ words", "one two three four five six seven eight " * 3 + LONG + "\\boxed{12}", False),
    ("two self-corrections", "3 + 4 = 8. Wait, that is off. Rechecking: 3 + 4 = 7, 7 + 5 = 12 apples in all, "
     "which is the total we want here. \\boxed{12}", False),
    ("one self-correction: kept", "3 + 4 = 8. Wait, that is off: 3 + 4 = 7, then 7 + 5 = 12 apples in all, which is "
     "the total we want here for the basket. \\boxed{x = 12}", True),
    ("the same self-correction twice counts once: kept", "Wait, 3 + 4 = 7. Wait, then 7 + 5 = 12 apples in all, which "
     "is the total we want for the basket she carries home. \\boxed{x = 12}", True),
    ("a self-correction split by a newline is found once whitespace collapses", "3 + 4 = 8. Let me\ncorrect that: "
     "3 + 4 = 7. Rechecking, 7 + 5 = 12 apples in all, the total we want. \\boxed{12}", False),
    ("surrounding whitespace is stripped before the length rules", "\n\n  " + LONG + "\\boxed{12}  \n", True),
]
