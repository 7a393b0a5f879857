"""Simulated users for examples/closed_loop.sh: support tickets sent to a route of a running
`tuneforge serve`, each answer judged through POST /v1/feedback.

    python examples/closed_loop_traffic.py --url http://127.0.0.1:8000 --route support --n 40 --offset 600
    python examples/closed_loop_traffic.py ... --shift-from 20          # from the 20th request on, off-topic prompts
    python examples/closed_loop_traffic.py ... --unhappy-with support-v2  # users dislike that variant's answers

Tickets come from examples/support_tickets.jsonl starting at --offset (past the lines used for
training). A right answer gets score 5; a wrong one score 2 and the right label as a correction,
so `tuneforge retrain` has corrections to learn from. With --unhappy-with, every answer of that
variant gets score 1 (no correction): feedback that turns bad, which a promotion must roll back.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from openai import OpenAI

OFF_TOPIC = ["Preheat the oven to {n} degrees and bake the sourdough for {m} minutes until the crust is golden.",
             "Whisk {n} eggs with sugar, fold in the flour and let the dough rest overnight in the fridge.",
             "Simmer the tomato sauce with garlic, basil and olive oil for {m} minutes, then season it to taste.",
             "Our hiking club meets at {n} am at the trailhead; bring water, sunscreen and {m} euros for the bus."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--route", required=True)
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--offset", type=int, default=600)
    parser.add_argument("--shift-from", type=int, default=None)
    parser.add_argument("--unhappy-with", default=None)
    parser.add_argument("--user-prefix", default="user")
    parser.add_argument("--data", type=Path, default=Path(__file__).with_name("support_tickets.jsonl"))
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    client = OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=args.api_key, max_retries=2, timeout=120)
    rng = random.Random(args.offset)
    served: dict[str, int] = {}
    right = 0
    for i in range(args.n):
        record = rows[(args.offset + i) % len(rows)]["messages"]
        prompt, label = record[:-1], record[-1]["content"]
        if args.shift_from is not None and i >= args.shift_from:
            prompt = prompt[:-1] + [{"role": "user", "content": rng.choice(OFF_TOPIC).format(
                n=rng.randint(2, 250), m=rng.randint(5, 90))}]
        reply = client.chat.completions.with_raw_response.create(
            model=args.route, messages=prompt, temperature=0, max_tokens=8, user=f"{args.user_prefix}-{args.offset + i}")
        variant = reply.headers.get("x-tuneforge-variant", "?")
        answer = reply.parse()
        served[variant] = served.get(variant, 0) + 1
        text = (answer.choices[0].message.content or "").strip()
        correct = text.lower().strip(" .") == label
        right += correct
        if args.unhappy_with and variant == args.unhappy_with:
            feedback = {"id": answer.id, "score": 1}
        elif args.shift_from is not None and i >= args.shift_from:
            feedback = None  # nobody knows the right label of an off-topic message
        else:
            feedback = {"id": answer.id, "score": 5} if correct else \
                {"id": answer.id, "score": 2, "correction": label}
        if feedback:
            client.post("/feedback", body=feedback, cast_to=object)
    print(json.dumps({"requests": args.n, "served": served, "right": right}))


if __name__ == "__main__":
    main()
