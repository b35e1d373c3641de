"""`python -m bench all` runs every benchmark; `python -m bench NAME` one of them."""

import sys

from bench import evaluate_speed, tiny_quality, unlearn_compare

BENCHES = {"tiny_quality": tiny_quality.main, "evaluate_speed": evaluate_speed.main,
           "unlearn_compare": unlearn_compare.main}


def main() -> None:
    names = sys.argv[1:] or ["all"]
    for name in names:
        if name == "all":
            for fn in BENCHES.values():
                fn([])
        elif name in BENCHES:
            BENCHES[name]([])
        else:
            sys.exit(f"unknown benchmark {name!r}; valid: all, {', '.join(BENCHES)}")


main()
