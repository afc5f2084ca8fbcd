"""Math-Verify as a reasonrl reward verifier (`reward.kind = "command"`; start it through
math-verify.sh, which makes its venv). One JSON request per line on stdin, one reply per line on
stdout: the reward is 1 when the response's final answer equals the reference answer
mathematically (numbers, fractions, LaTeX expressions, sets, intervals), else 0. A response
with a GSM8K answer line (`#### N`) is read from that line: GSM8K's `$` signs are currency, which
Math-Verify would take for LaTeX.

Metrics: `parsed` (an answer was found in the response) and `timed_out` (parsing or comparing
ran past its time limit, so the reward is 0: counted in the log, never silently)."""
import json
import os
import sys

# This file's name is the package's: import the package, not this file.
here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != here]
from math_verify import parse, verify  # noqa: E402


def main():
    for line in sys.stdin:
        request = json.loads(line)
        timed_out, parsed, reward = 0.0, 0.0, 0.0
        try:
            gold = parse("$" + request["answer"] + "$", raise_on_error=True)
            response = request["response"]
            if "####" in response:
                response = response.split("####", 1)[1]
            answer = parse(response, raise_on_error=True)
            parsed = float(bool(answer))
            reward = float(bool(answer) and verify(gold, answer, raise_on_error=True))
        except TimeoutError:
            timed_out = 1.0
            print(f"math-verify: timed out on {request['id']}", file=sys.stderr, flush=True)
        reply = {"id": request["id"], "reward": reward, "metrics": {"parsed": parsed, "timed_out": timed_out}}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
