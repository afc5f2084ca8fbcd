#!/usr/bin/env python3
"""Math-Verify's own test cases as JSON lines, for measuring our answer checker against it.

    scripts/math_verify_cases.py MATH_VERIFY_CHECKOUT > tests/fixtures/math-verify/cases.jsonl

Reads every `@pytest.mark.parametrize` table of (gold, pred, expected) in the checkout's tests/
with Python's own parser (nothing of Math-Verify is imported or run) and writes one line per case:
{"category": "file::test", "scope": ..., "answer": gold, "response": pred, "expected": true|false},
the shape `reasonrl grade` reads. The scope sorts the gold answers by what they are: "number"
(integers, decimals, fractions, radicals, percentages, units, thousands separators: what the
built-in checker must get right), "expression" (symbols: 2-2p, \\sin a), "verifier" (sets,
intervals, tuples, lists, matrices, equations, relations: left to a verifier process, where
the built-in checker must never accept a wrong answer). Tables with options our checker has no counterpart for keep only the
rows in Math-Verify's defaults (strict=True, allow_set_relation_comp=False, precision 6 and 5
both kept).
"""
import ast
import json
import pathlib
import re
import sys

DEFAULTS = {"strict": True, "allow_set_relation_comp": False}


def boxed(text):
    """The last \\boxed{...} of text, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


VERIFIER = re.compile(
    r"\\begin|\\cup|\\cap|\\in\b|\\infty|\\le|\\ge|\\ne|\\pm|\\\{|[=<>;\[\]]|(?<!\{),(?!\\!)|\band\b|\bor\b"
)
TEXT = re.compile(r"\\(text|textnormal|mbox)\{([^}]*)\}")
UNITS = re.compile(r"\^\\circ|\^\{\\circ\}|\\%|%|\\left|\\right|\\!|\{,\}|(?<![\\a-zA-Z])[a-zA-Z]{2,}")
NUMBER = re.compile(r"-?(\d|\.|/|\\[dtc]?frac|\\sqrt|[{}^])+")


def scope(gold):
    """number, expression or verifier: what the gold answer is (see the module's doc)."""
    if gold.count("\\boxed") > 1:
        return "verifier"  # several boxed answers make a set
    answer = (boxed(gold) or gold).strip().strip("$").strip()
    if VERIFIER.search(answer):
        return "verifier"
    bare = TEXT.sub(lambda m: "" if re.search("[a-zA-Z]", m[2]) else m[2], answer)
    bare = UNITS.sub("", bare).replace(" ", "").replace("$", "")
    return "number" if NUMBER.fullmatch(bare) else "expression"


def cases(path):
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for dec in fn.decorator_list:
            if not (isinstance(dec, ast.Call) and ast.unparse(dec.func) == "pytest.mark.parametrize"):
                continue
            names = [n.strip() for n in ast.literal_eval(dec.args[0]).split(",")]
            if not {"gold", "pred"} <= set(names):
                continue
            for row in dec.args[1].elts:
                try:
                    values = dict(zip(names, ast.literal_eval(row)))
                except ValueError:
                    continue  # a row built by code, not a literal
                if any(values.get(k, v) != v for k, v in DEFAULTS.items()):
                    continue
                expected = values.get("expected", values.get("result"))
                yield {
                    "category": f"{path.stem}::{fn.name}",
                    "scope": scope(values["gold"]),
                    "answer": values["gold"],
                    "response": values["pred"],
                    "expected": bool(expected),
                }


def main():
    root = pathlib.Path(sys.argv[1]) / "tests"
    for path in sorted(root.glob("test_*.py")):
        for case in cases(path):
            print(json.dumps(case, ensure_ascii=False))


if __name__ == "__main__":
    main()
